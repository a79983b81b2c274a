"""The one exception type for mistakes a user can fix (bad grid, unknown name, bad value).

The CLI prints its message on one line and exits with status 2, without a traceback.
Everything else is a bug or a failing run and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
