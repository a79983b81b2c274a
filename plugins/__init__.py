"""The built-in plugins of ssl-bench.

Each module here is registered through ssl-bench's own ``[project.entry-points.ssl_bench]``
table, exactly as a third-party plugin would be; the core imports none of them.
"""
