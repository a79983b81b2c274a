"""Paper-style tables (ssl_bench/tables.py) from hand-made result rows with known values, the
``--compare`` view against a reference CSV, and the ``ssl-bench table`` / ``run`` CLI paths.

The runs are real: ``expand(parse_grid(...), load_registry())`` gives the run ids the CLI would
compute; the result rows are a DataFrame with run_id, status and the metric columns (what
``results.read_runs`` returns), so every cell value is known exactly.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
import sys
import textwrap

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import numpy as np
import pandas as pd
import pytest

from conftest import cli, write_grid
from ssl_bench import UserError
from ssl_bench import results as results_module
from ssl_bench.grid import TableSpec, expand, parse_grid
from ssl_bench.protocol import METRICS
from ssl_bench.registry import load_registry
from ssl_bench.runner import row_schema
from ssl_bench.tables import MISSING, canon, render, table_frame

NAN = float("nan")

#: rows n_labeled, columns n_unlabeled, both deliberately not in sorted order, 3 seeds per cell
GRID = """
name = "g"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
[axes]
n_labeled = [50, 20, "all"]
n_unlabeled = [100, 0]
seed = [0, 1, 2]
[[table]]
name = "t"
rows = "n_labeled"
columns = "n_unlabeled"
metric = "test_error"
caption = "Test error."
"""

#: columns are a float hyperparameter (0.5, 1.0): keys "1" / "1.0" / 1.0 must meet
COMPARE_GRID = """
name = "cmp"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
n_unlabeled = 100
[axes]
n_labeled = [20, "all"]
methods.lba.visit_weight = [0.5, 1.0]
seed = [0, 1, 2]
[[table]]
name = "t"
rows = "n_labeled"
columns = "methods.lba.visit_weight"
reference = "ref.csv"
"""

#: the paper's numbers: "20.0"/"1" and "all"/"1.0" must match the grid's 20/1.0 and "all"/1.0;
#: the row of another table must be ignored
REFERENCE_CSV = """table,row,column,value,spread,source
t,20.0,1,6.25,0.32,paper Table 3
t,all,0.5,6.25,,paper Table 3
t,all,1.0,4.00,0.10,paper Table 3
other,20,1,99.0,1.0,another table
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def grid_of(text: str, registry, path=None):
    grid = parse_grid(tomllib.loads(textwrap.dedent(text)), path=path)
    return grid, expand(grid, registry)


@pytest.fixture(scope="module")
def grid_runs(registry):
    return grid_of(GRID, registry)


def cell_ids(runs, spec: TableSpec) -> dict[tuple[str, str], list[str]]:
    """(row label, column label) -> the run ids of that cell, in seed order."""
    out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for run in runs:
        flat = run.flat()
        out.setdefault((canon(flat[spec.rows]), canon(flat[spec.columns])), []).append((flat["seed"], run.run_id))
    return {k: [rid for _, rid in sorted(v)] for k, v in out.items()}


def result_rows(runs, spec: TableSpec, cells: dict, metric: str = "test_error") -> pd.DataFrame:
    """Rows for ``cells``: {(row, col): [value or (status, value), ...]} (one entry per seed)."""
    ids = cell_ids(runs, spec)
    rows = []
    for key, values in cells.items():
        for run_id, value in zip(ids[key], values):
            status, value = value if isinstance(value, tuple) else ("ok", value)
            rows.append({"run_id": run_id, "status": status, metric: value})
    return pd.DataFrame(rows, columns=["run_id", "status", metric])


def frame_of(spec, runs, rows, **kw) -> pd.DataFrame:
    return table_frame(spec, runs, rows, **kw)[0]


# ------------------------------------------------------------------------------ cell statistics
def test_grid_fixture_has_three_seeds_per_cell(grid_runs):
    grid, runs = grid_runs
    ids = cell_ids(runs, grid.tables[0])
    assert len(runs) == 18 and len(ids) == 6 and all(len(v) == 3 for v in ids.values())


@pytest.mark.parametrize("statistic, expected", [("median", "2.00 (2.65)"), ("mean", "3.00 (2.65)")])
def test_cell_is_median_or_mean_with_sample_std(grid_runs, statistic, expected):
    grid, runs = grid_runs
    spec = dataclasses.replace(grid.tables[0], statistic=statistic)
    values = [1.0, 2.0, 6.0]  # median 2, mean 3, std ddof=1 sqrt(7) = 2.6458 (ddof=0 would be 2.16)
    assert f"{np.std(values, ddof=1):.2f}" == "2.65" and f"{np.std(values):.2f}" == "2.16"
    frame = frame_of(spec, runs, result_rows(runs, spec, {("20", "0"): values}))
    assert frame.loc["20", "0"] == expected


def test_median_of_an_even_count_is_the_midpoint(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {("20", "0"): [1.0, ("failed", NAN), 4.0]})
    assert frame_of(spec, runs, rows).loc["20", "0"] == f"2.50 ({np.std([1.0, 4.0], ddof=1):.2f})"


@pytest.mark.parametrize("fmt, expected", [(".2f", "6.25 (0.32)"), (".3f", "6.250 (0.323)"), (".1f", "6.2 (0.3)")])
def test_cell_text_uses_the_table_format(grid_runs, fmt, expected):
    grid, runs = grid_runs
    spec = dataclasses.replace(grid.tables[0], format=fmt)
    rows = result_rows(runs, spec, {("50", "100"): [6.0, 6.25, 6.64]})  # median 6.25, std 0.3226
    assert frame_of(spec, runs, rows).loc["50", "100"] == expected


def test_one_run_or_spread_none_gives_no_parentheses(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {("50", "100"): [6.25], ("50", "0"): [1.0, 2.0, 6.0]})
    frame = frame_of(spec, runs, rows)
    assert frame.loc["50", "100"] == "6.25"
    assert frame.loc["50", "0"] == "2.00 (2.65)"
    no_spread = frame_of(dataclasses.replace(spec, spread="none"), runs, rows)
    assert no_spread.loc["50", "100"] == "6.25" and no_spread.loc["50", "0"] == "2.00"


def test_other_metric_column_is_used(grid_runs):
    grid, runs = grid_runs
    spec = dataclasses.replace(grid.tables[0], metric="test_error_min")
    rows = result_rows(runs, spec, {("20", "0"): [3.0, 4.0, 5.0]}, metric="test_error_min")
    rows["test_error"] = 50.0  # must not be used
    assert frame_of(spec, runs, rows).loc["20", "0"] == "4.00 (1.00)"


def test_missing_cells_are_a_dash(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {("20", "0"): [1.0, 2.0, 3.0]})
    frame = frame_of(spec, runs, rows)
    assert frame.loc["20", "0"] == "2.00 (1.00)"
    others = [frame.loc[r, c] for r in frame.index for c in frame.columns if (r, c) != ("20", "0")]
    assert others == [MISSING] * 5 and MISSING == "—"
    # no results at all (what results.read_runs returns for an empty directory)
    empty = pd.DataFrame(columns=list(results_module.CORE_COLUMNS))
    frame = frame_of(spec, runs, empty, show_n=True)
    assert frame.shape == (3, 2) and (frame == MISSING).all().all()


def test_failed_and_diverged_runs_are_excluded_and_counted(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {
        ("50", "100"): [5.0, ("failed", NAN), ("diverged", 90.0)],
        ("20", "0"): [("failed", 1.0), 2.0, 4.0],
        ("all", "0"): [("diverged", 80.0), ("diverged", 70.0), ("failed", NAN)],
    })
    # a row of a run that is no longer in the grid counts for nothing
    rows = pd.concat([rows, pd.DataFrame([{"run_id": "0123456789ab", "status": "failed", "test_error": 0.0}])])
    frame, note = table_frame(spec, runs, rows)
    assert frame.loc["50", "100"] == "5.00"
    assert frame.loc["20", "0"] == "3.00 (1.41)"
    assert frame.loc["all", "0"] == MISSING
    assert "Excluded: 3 diverged, 3 failed run(s)." in note
    _, clean = table_frame(spec, runs, result_rows(runs, spec, {("50", "100"): [5.0, 6.0, 7.0]}))
    assert "Excluded" not in clean


def test_show_n_counts_the_runs_in_each_cell(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {("50", "100"): [5.0, ("failed", NAN), ("diverged", 90.0)],
                                    ("20", "0"): [1.0, 2.0, 6.0]})
    frame = frame_of(spec, runs, rows, show_n=True)
    assert frame.loc["20", "0"] == "2.00 (2.65) [n=3]"
    assert frame.loc["50", "100"] == "5.00 [n=1]"
    assert frame.loc["all", "100"] == MISSING
    assert "[n=" not in frame_of(spec, runs, rows).loc["20", "0"]


def test_rows_and_columns_follow_the_grid_order(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {k: [float(i)] for i, k in enumerate(cell_ids(runs, spec))})
    frame = frame_of(spec, runs, rows)
    assert list(frame.index) == ["50", "20", "all"]
    assert list(frame.columns) == ["100", "0"]
    assert frame.index.name == "n_labeled \\ n_unlabeled"
    text = render(spec, runs, rows, "csv")
    comment, *lines = text.strip().splitlines()
    assert comment.startswith(f"# {spec.name}: ") and "median" in comment
    assert [line.split(",")[0] for line in lines] == ["n_labeled \\ n_unlabeled", "50", "20", "all"]


def test_where_filters_the_runs_of_a_table(registry):
    grid, runs = grid_of("""
        [base]
        dataset = "digits"
        backbone = "lba_convnet"
        n_unlabeled = 100
        [axes]
        method = ["supervised", "lba"]
        n_labeled = [20, 50]
        seed = [0, 1]
        [[table]]
        name = "t"
        rows = "n_labeled"
        columns = "method"
        where = { method = "lba" }
        """, registry)
    spec = grid.tables[0]
    flats = {r.run_id: r.flat() for r in runs}
    rows = pd.DataFrame([{"run_id": rid, "status": "failed" if f["method"] == "supervised" else "ok",
                          "test_error": 99.0 if f["method"] == "supervised" else 10.0 * f["seed"] + f["n_labeled"]}
                         for rid, f in flats.items()])
    frame, note = table_frame(spec, runs, rows)
    assert list(frame.columns) == ["lba"] and list(frame.index) == ["20", "50"]
    assert frame.loc["20", "lba"] == "25.00 (7.07)"
    assert "Excluded" not in note  # the filtered-out runs' failures are not this table's
    # where values are matched as table keys: 1.0 selects the runs of seed 1
    seed1 = dataclasses.replace(spec, where={"method": "lba", "seed": 1.0})
    assert frame_of(seed1, runs, rows).loc["50", "lba"] == "60.00"
    nothing = frame_of(dataclasses.replace(spec, where={"method": "nope"}), runs, rows)
    assert nothing.empty


def test_description_names_statistic_and_selection_rule(grid_runs):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {("20", "0"): [1.0, 2.0, 6.0]})
    _, note = table_frame(spec, runs, rows)
    assert note.startswith("Cells: median (std, ddof=1) over runs;")
    assert METRICS["test_error"] in note
    _, note = table_frame(dataclasses.replace(spec, statistic="mean", spread="none", metric="test_error_min"),
                          runs, rows)
    assert "mean" in note and "median" not in note and "std" not in note
    assert "TEST set" in note  # test-set selection is named as such


# ------------------------------------------------------------------------------ select: tuning on validation
SELECT_GRID = """
name = "tune"
[base]
dataset = "digits"
backbone = "lba_convnet"
n_unlabeled = 100
n_validation = 100
[axes]
method = ["supervised", "vat"]
n_labeled = [20, 50]
methods.vat.eps = [0.3, 1.0, 3.0]
seed = [0, 1, 2]
[[table]]
name = "t"
rows = "method"
columns = "n_labeled"
select = "val_error"
"""


def select_rows(runs, values) -> pd.DataFrame:
    """values(method, n_labeled, eps, seed) -> (test_error, val_error) for every run."""
    rows = []
    for run in runs:
        flat = run.flat()
        test, val = values(flat["method"], flat["n_labeled"], flat.get("methods.vat.eps"), flat["seed"])
        rows.append({"run_id": run.run_id, "status": "ok", "test_error": test, "val_error": val})
    return pd.DataFrame(rows)


def test_select_keeps_the_setting_with_the_best_median_validation_value(registry):
    grid, runs = grid_of(SELECT_GRID, registry)
    assert len(runs) == (1 + 3) * 2 * 3
    # vat: eps 1.0 is best on validation at 20 labels, eps 3.0 at 50; the TEST error would have
    # picked eps 0.3 (test 1.0) at both: the table must not look at it
    val = {(20, 0.3): 30.0, (20, 1.0): 10.0, (20, 3.0): 20.0, (50, 0.3): 30.0, (50, 1.0): 20.0, (50, 3.0): 5.0}
    test = {(20, 0.3): 1.0, (20, 1.0): 12.0, (20, 3.0): 15.0, (50, 0.3): 1.0, (50, 1.0): 9.0, (50, 3.0): 7.0}

    def values(method, n, eps, seed):
        if method == "supervised":
            return 40.0 + seed, 50.0
        return test[(n, eps)] + seed, val[(n, eps)] + (9.0 if seed == 2 else 0.0)  # an outlier seed: median ignores it

    frame, note = table_frame(grid.tables[0], runs, select_rows(runs, values))
    assert frame.loc["vat", "20"] == "13.00 (1.00)" and frame.loc["vat", "50"] == "8.00 (1.00)"
    assert frame.loc["supervised", "20"] == "41.00 (1.00)"  # one candidate: nothing to choose
    assert "best median val_error" in note
    assert "vat @ 20: eps=1" in note and "vat @ 50: eps=3" in note and "supervised @" not in note


def test_select_ties_go_to_the_first_setting_in_grid_order(registry):
    grid, runs = grid_of(SELECT_GRID, registry)
    frame, note = table_frame(grid.tables[0], runs, select_rows(
        runs, lambda m, n, eps, seed: ((eps or 0) * 10, 5.0)))
    assert frame.loc["vat", "20"] == "3.00 (0.00)" and "vat @ 20: eps=0.3" in note


def test_select_for_higher_is_better_columns_and_cells_without_results(registry):
    grid, runs = grid_of(SELECT_GRID.replace('select = "val_error"', 'select = "val_accuracy"'), registry)
    spec = grid.tables[0]
    some = [r for r in runs if not (r.config["method"] == "vat" and r.config["n_labeled"] == 50)]
    rows = select_rows(some, lambda m, n, eps, seed: (eps or 0, 100.0 - 10 * (eps or 0)))
    rows = rows.rename(columns={"val_error": "val_accuracy"})
    frame, note = table_frame(spec, runs, rows)
    assert frame.loc["vat", "20"] == "0.30 (0.00)" and "vat @ 20: eps=0.3" in note  # the highest accuracy
    assert frame.loc["vat", "50"] == MISSING


def test_select_names_an_unknown_column_before_training(tmp_path):
    path = write_grid(tmp_path, SELECT_GRID.replace('select = "val_error"', 'select = "val_eror"'))
    result = cli("run", "--grid", str(path), "--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "select 'val_eror' is not a result column" in result.stderr


# ------------------------------------------------------------------------------ formats
@pytest.fixture(scope="module")
def rendered_inputs(grid_runs):
    """Cells with spread (so the text is not a number), one missing cell, a caption to escape."""
    grid, runs = grid_runs
    spec = dataclasses.replace(grid.tables[0], caption="Error (%) of A & B_c #1")
    cells = {k: [1.0, 2.0, 6.0] for k in cell_ids(runs, spec) if k != ("all", "0")}
    cells[("20", "0")] = [6.0, 6.25, 6.64]
    return spec, runs, result_rows(runs, spec, cells)


def test_markdown_is_a_pipe_table(rendered_inputs):
    spec, runs, rows = rendered_inputs
    text = render(spec, runs, rows, "markdown")
    head, table = text.split("\n\n", 1)
    assert head.startswith("**t**: Error (%) of A & B_c #1 Cells: median (std, ddof=1)")
    lines = table.strip().splitlines()
    assert len(lines) == 5
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == 4 for line in lines)
    assert re.fullmatch(r"\|[-:|]+\|", lines[1])
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["n_labeled \\ n_unlabeled", "100", "0"]
    assert cells[2:] == [["50", "2.00 (2.65)", "2.00 (2.65)"], ["20", "2.00 (2.65)", "6.25 (0.32)"],
                         ["all", "2.00 (2.65)", MISSING]]


def test_latex_is_booktabs_with_escaped_caption(rendered_inputs):
    spec, runs, rows = rendered_inputs
    text = render(spec, runs, rows, "latex")
    lines = text.splitlines()
    assert lines[0] == "\\begin{table}" and lines[-1] == "\\end{table}"
    order = [text.index(s) for s in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}")]
    assert order == sorted(order)
    caption = next(line for line in lines if line.startswith("\\caption{"))
    assert caption.startswith("\\caption{Error (\\%) of A \\& B\\_c \\#1 Cells: median (std, ddof=1) over runs;")
    assert caption.endswith("}") and "test error (\\%)" in caption
    assert "\\label{tab:t}" in text
    body = text[text.index("\\midrule"):text.index("\\bottomrule")]
    assert "6.25 (0.32)" in body and "2.00 (2.65)" in body
    assert MISSING not in text and re.search(r"all\s*&\s*2\.00 \(2\.65\)\s*&\s*--\s*\\\\", body)


def test_csv_parses_back_with_pandas(rendered_inputs):
    spec, runs, rows = rendered_inputs
    text = render(spec, runs, rows, "csv")
    frame = pd.read_csv(io.StringIO(text), index_col=0, dtype=str, keep_default_na=False, comment="#")
    assert frame.index.name == "n_labeled \\ n_unlabeled"
    assert list(frame.index) == ["50", "20", "all"] and list(frame.columns) == ["100", "0"]
    assert frame.loc["20", "0"] == "6.25 (0.32)"
    assert frame.loc["50", "100"] == "2.00 (2.65)"
    assert frame.loc["all", "0"] == MISSING


def test_html_is_a_table(rendered_inputs):
    spec, runs, rows = rendered_inputs
    text = render(spec, runs, rows, "html")
    assert text.startswith("<p><b>t</b>: ") and "Cells: median (std, ddof=1)" in text.split("\n", 1)[0]
    assert text.count("<table>") == 1 and text.rstrip().endswith("</table>")
    cells = [m[1].strip() for m in re.findall(r"<(td|th)(?:\s[^>]*)?>(.*?)</\1>", text, re.S)]
    assert cells[:3] == ["n_labeled \\ n_unlabeled", "100", "0"]
    assert cells[3:] == ["50", "2.00 (2.65)", "2.00 (2.65)", "20", "2.00 (2.65)", "6.25 (0.32)",
                         "all", "2.00 (2.65)", MISSING]


def test_unknown_format_is_a_user_error(rendered_inputs):
    spec, runs, rows = rendered_inputs
    with pytest.raises(UserError, match="xml"):
        render(spec, runs, rows, "xml")


NUMPARSE_BUG = ("tables.render passes cell strings to tabulate with number parsing on: a column whose cells all "
                "look like numbers is re-formatted ('7.00' -> '7', '+0.75' -> '0.75'); needs disable_numparse=True")


@pytest.mark.parametrize("fmt", ["markdown", "latex", "html"])
def test_cells_that_look_like_numbers_are_rendered_verbatim(grid_runs, fmt):
    grid, runs = grid_runs
    spec = grid.tables[0]
    rows = result_rows(runs, spec, {k: [7.0] for k in cell_ids(runs, spec)})  # one run: "7.00", no spread
    assert frame_of(spec, runs, rows).loc["20", "0"] == "7.00"
    text = render(spec, runs, rows, fmt)
    assert len(re.findall(r"(?<![\d.])7\.00(?![\d])", text)) == 6, text


def test_compare_markdown_keeps_the_sign_of_the_difference(compare_grid, tmp_path):
    spec, runs = compare_grid
    # every cell has a paper number and results, so no diff column holds a "—"
    (tmp_path / "full.csv").write_text("table,row,column,value,spread,source\n"
                                       "t,20,0.5,3.50,,p\nt,20,1,6.25,,p\nt,all,0.5,6.25,,p\nt,all,1,4.00,,p\n")
    spec = dataclasses.replace(spec, reference=tmp_path / "full.csv")
    rows = result_rows(runs, spec, {("20", "1"): [7.0], ("all", "0.5"): [5.0], ("20", "0.5"): [4.0], ("all", "1"): [4.0]})
    assert frame_of(spec, runs, rows, compare=True)["1 diff"].tolist() == ["+0.75", "+0.00"]
    lines = [[c.strip() for c in line.strip("|").split("|")]
             for line in render(spec, runs, rows, "markdown", compare=True).splitlines() if line.startswith("|")]
    assert lines[2] == ["20", "4.00", "3.50", "+0.50", "7.00", "6.25", "+0.75"]
    assert lines[3] == ["all", "5.00", "6.25", "-1.25", "4.00", "4.00", "+0.00"]


HTML_CAPTION_BUG = "tables.render puts the caption into HTML unescaped (LaTeX captions are escaped); use html.escape"


def test_html_caption_is_escaped(rendered_inputs):
    spec, runs, rows = rendered_inputs
    spec = dataclasses.replace(spec, caption="A & B <i>x</i>")
    first = render(spec, runs, rows, "html").split("\n", 1)[0]
    assert "A &amp; B &lt;i&gt;x&lt;/i&gt;" in first


# ------------------------------------------------------------------------------ --compare
@pytest.fixture
def compare_grid(tmp_path, registry):
    grid_path = write_grid(tmp_path, COMPARE_GRID, "cmp.toml")
    (tmp_path / "ref.csv").write_text(REFERENCE_CSV)
    grid, runs = grid_of(COMPARE_GRID, registry, path=grid_path)
    return grid.tables[0], runs


def compare_cells(runs, spec):
    return result_rows(runs, spec, {
        ("20", "1"): [6.0, 7.0, 9.5],    # median 7.00, mean 7.50, std 1.80; paper 6.25 (0.32)
        ("all", "0.5"): [5.0],           # paper 6.25, no spread
        ("20", "0.5"): [3.0, 4.0, 5.0],  # no paper number
        # ("all", "1"): no results, paper 4.00 (0.10)
    })


def test_compare_reference_is_resolved_next_to_the_grid(compare_grid, tmp_path):
    spec, _ = compare_grid
    assert spec.reference == tmp_path / "ref.csv"


def test_compare_shows_ours_paper_and_difference(compare_grid):
    spec, runs = compare_grid
    frame = frame_of(spec, runs, compare_cells(runs, spec), compare=True)
    assert list(frame.index) == ["20", "all"]
    assert list(frame.columns) == ["0.5 ours", "0.5 paper", "0.5 diff", "1 ours", "1 paper", "1 diff"]
    std = f"{np.std([6.0, 7.0, 9.5], ddof=1):.2f}"
    assert frame.loc["20"].tolist() == ["4.00 (1.00)", MISSING, MISSING, f"7.00 ({std})", "6.25 (0.32)", "+0.75"]
    assert frame.loc["all"].tolist() == ["5.00", "6.25", "-1.25", MISSING, "4.00 (0.10)", MISSING]


def test_compare_difference_uses_the_table_statistic_and_format(compare_grid):
    spec, runs = compare_grid
    mean = dataclasses.replace(spec, statistic="mean", format=".3f")
    frame = frame_of(mean, runs, compare_cells(runs, spec), compare=True)
    assert frame.loc["20", "1 ours"].startswith("7.500 (")
    assert frame.loc["20", "1 paper"] == "6.250 (0.320)"
    assert frame.loc["20", "1 diff"] == "+1.250"
    assert frame.loc["all", "0.5 diff"] == "-1.250"


def test_compare_shows_the_paper_when_there_are_no_results(compare_grid):
    spec, runs = compare_grid
    empty = pd.DataFrame(columns=list(results_module.CORE_COLUMNS))
    frame = frame_of(spec, runs, empty, compare=True)
    assert frame.loc["20"].tolist() == [MISSING, MISSING, MISSING, MISSING, "6.25 (0.32)", MISSING]
    assert frame.loc["all"].tolist() == [MISSING, "6.25", MISSING, MISSING, "4.00 (0.10)", MISSING]


def test_compare_csv_renders_the_comparison(compare_grid):
    spec, runs = compare_grid
    text = render(spec, runs, compare_cells(runs, spec), "csv", compare=True)
    frame = pd.read_csv(io.StringIO(text), index_col=0, dtype=str, keep_default_na=False, comment="#")
    assert frame.loc["20", "1 diff"] == "+0.75" and frame.loc["all", "0.5 diff"] == "-1.25"
    assert frame.loc["all", "1 paper"] == "4.00 (0.10)"


def test_compare_without_a_reference_is_a_user_error(grid_runs):
    grid, runs = grid_runs
    with pytest.raises(UserError, match=r"table 't' has no reference"):
        table_frame(grid.tables[0], runs, pd.DataFrame(), compare=True)


def test_compare_with_a_missing_or_bad_reference_file_is_a_user_error(compare_grid, tmp_path):
    spec, runs = compare_grid
    with pytest.raises(UserError, match="nowhere.csv.*does not exist"):
        table_frame(dataclasses.replace(spec, reference=tmp_path / "nowhere.csv"), runs, pd.DataFrame(), compare=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("table,row,value\nt,20,1.0\n")
    with pytest.raises(UserError, match="column"):
        table_frame(dataclasses.replace(spec, reference=bad), runs, pd.DataFrame(), compare=True)


# ------------------------------------------------------------------------------ the CLI, end to end
@pytest.fixture(scope="module")
def compare_on_disk(tmp_path_factory, registry):
    """grids/cmp.toml with its reference grids/ref.csv, and result rows in out/cmp/runs written
    through the real parquet path (schema of the runner, one atomic file per run)."""
    root = tmp_path_factory.mktemp("cli-compare")
    (root / "grids").mkdir()
    grid_path = write_grid(root / "grids", COMPARE_GRID, "cmp.toml")
    (root / "grids" / "ref.csv").write_text(REFERENCE_CSV)
    grid, runs = grid_of(COMPARE_GRID, registry, path=grid_path)
    schema = row_schema(runs, registry)
    frame = compare_cells(runs, grid.tables[0])
    for row in frame.to_dict("records"):
        row.update(grid="cmp", test_error=None if math.isnan(row["test_error"]) else row["test_error"])
        results_module.write_atomic(results_module.row_table(row, schema),
                                    results_module.runs_dir(root / "out", "cmp") / f"{row['run_id']}.parquet")
    assert len(pd.read_parquet(root / "out" / "cmp" / "runs")) == 7
    return root


def test_cli_table_compare_end_to_end(compare_on_disk):
    # a relative --grid from the directory above it: ref.csv is found next to the grid file, not in the cwd.
    # (Every column here holds a "—", so this passes despite the tabulate number parsing bug below.)
    proc = cli("table", "--grid", "grids/cmp.toml", "--compare", "--out", "out", cwd=compare_on_disk)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("**t**: Cells: median")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == ["n_labeled \\ methods.lba.visit_weight", "0.5 ours", "0.5 paper", "0.5 diff",
                       "1 ours", "1 paper", "1 diff"]
    std = f"{np.std([6.0, 7.0, 9.5], ddof=1):.2f}"
    assert rows[2] == ["20", "4.00 (1.00)", MISSING, MISSING, f"7.00 ({std})", "6.25 (0.32)", "+0.75"]
    assert rows[3] == ["all", "5.00", "6.25", "-1.25", MISSING, "4.00 (0.10)", MISSING]


def test_cli_run_prints_the_table_of_its_real_results(tmp_path):
    """Two real 2-step runs in one cell: the table printed after `run` matches the parquet rows."""
    grid = write_grid(tmp_path, """
        name = "real"
        [base]
        dataset = "digits"
        backbone = "lba_convnet"
        method = "lba"
        steps = 2
        eval_every = 1
        last_k = 1
        labeled_per_class = 2
        unlabeled_batch = 10
        n_labeled = 20
        n_unlabeled = 50
        [base.backbones.lba_convnet]
        widths = "4"
        embedding_dim = 8
        [axes]
        seed = [0, 1]
        [[table]]
        name = "real_t"
        rows = "n_labeled"
        columns = "n_unlabeled"
        format = ".3f"
        """)
    proc = cli("run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_parquet(tmp_path / "out" / "real" / "runs")
    assert len(rows) == 2 and set(rows["status"]) == {"ok"}
    errors = rows["test_error"].to_numpy()
    expected = f"{np.median(errors):.3f} ({np.std(errors, ddof=1):.3f})"
    assert "**real_t**: Cells: median (std, ddof=1)" in proc.stdout
    assert re.search(rf"^\|\s*20\s*\|\s*{re.escape(expected)}\s*\|$", proc.stdout, re.M), proc.stdout


# ------------------------------------------------------------------------------ where before the key check
WHERE_GRID = """
name = "w"
[base]
dataset = "digits"
backbone = "lba_convnet"
[axes]
method = ["supervised", "lba"]
methods.lba.visit_weight = [0.5, 1.0]
[[table]]
name = "knob"
rows = "method"
columns = "methods.lba.visit_weight"
where = { method = "lba" }
"""


def test_where_selects_the_runs_before_their_keys_are_checked(tmp_path, registry):
    from ssl_bench.runner import prepare

    prepared = prepare(str(write_grid(tmp_path, WHERE_GRID)), registry, data_dir=tmp_path, data="skip")
    assert len(prepared.runs) == 3  # supervised once, lba at two visit weights
    frame = frame_of(prepared.grid.tables[0], prepared.runs, pd.DataFrame())
    assert list(frame.index) == ["lba"] and list(frame.columns) == ["0.5", "1"]
    # without the where, the supervised run has no visit weight: one clear message
    with pytest.raises(UserError, match=r"refers to 'methods.lba.visit_weight', which is not a setting of every run"):
        prepare(str(write_grid(tmp_path, WHERE_GRID.replace('where = { method = "lba" }\n', ""), "x.toml")),
                registry, data_dir=tmp_path, data="skip")
    with pytest.raises(UserError, match=r"table 'knob': no run matches where = \{'method': 'vat'\}"):
        prepare(str(write_grid(tmp_path, WHERE_GRID.replace('method = "lba" }', 'method = "vat" }'), "y.toml")),
                registry, data_dir=tmp_path, data="skip")


# ------------------------------------------------------------------------------ coverage (domain adaptation)
COVERAGE_GRID = """
name = "cov"
[base]
backbone = "lba_convnet"
n_labeled = 100
[[zip]]
method = ["supervised", "lba", "supervised"]
task = ["domain_adaptation", "domain_adaptation", "ssl"]
dataset = ["digits", "digits", "digits_inverted"]
target = ["digits_inverted", "digits_inverted", ""]
[axes]
seed = [0, 1, 2]
[[table]]
name = "da"
rows = "method"
columns = "target"
where = { task = "domain_adaptation" }
coverage = { source_only = { method = "supervised", task = "domain_adaptation" }, target_only = { task = "ssl" } }
"""


def coverage_rows(runs, errors: dict) -> pd.DataFrame:
    """errors[(method, task)] = [error per seed]."""
    out = []
    for run in runs:
        flat = run.flat()
        out.append({"run_id": run.run_id, "status": "ok",
                    "test_error": errors[(flat["method"], flat["task"])][flat["seed"]]})
    return pd.DataFrame(out)


def test_coverage_is_the_share_of_the_gap_closed_by_hand(registry):
    grid, runs = grid_of(COVERAGE_GRID, registry)
    assert len(runs) == 9
    # source only 30 (median of 29/30/31), target only 10: lba at 15 closes 75% of the gap
    errors = {("supervised", "domain_adaptation"): [29.0, 30.0, 31.0], ("lba", "domain_adaptation"): [14.0, 15.0, 16.0],
              ("supervised", "ssl"): [10.0, 9.0, 11.0]}
    frame, note = table_frame(grid.tables[0], runs, coverage_rows(runs, errors))
    assert list(frame.columns) == ["digits_inverted", "digits_inverted coverage %"]
    assert frame.loc["lba", "digits_inverted coverage %"] == "75.0"
    assert frame.loc["supervised", "digits_inverted coverage %"] == "0.0"
    assert frame.loc["lba", "digits_inverted"] == "15.00 (1.00)"  # the values themselves are unchanged
    assert "source only = 30.00 (3 runs matching" in note and "target only = 10.00 (3 runs" in note
    # a target-only bound that is not better than source only: coverage is undefined, not a huge number
    errors[("supervised", "ssl")] = [31.0, 32.0, 33.0]
    frame, _ = table_frame(grid.tables[0], runs, coverage_rows(runs, errors))
    assert frame.loc["lba", "digits_inverted coverage %"] == MISSING


def test_coverage_settings_are_checked(tmp_path, registry):
    from ssl_bench.runner import prepare

    bad = COVERAGE_GRID.replace('target_only = { task = "ssl" }', "target_only = {}")
    with pytest.raises(UserError, match=r"coverage must be \{ source_only = \{\.\.\.\}, target_only"):
        grid_of(bad, registry)
    none = COVERAGE_GRID.replace('target_only = { task = "ssl" }', 'target_only = { method = "vat" }')
    with pytest.raises(UserError, match=r"no run matches coverage\.target_only = \{'method': 'vat'\}"):
        prepare(str(write_grid(tmp_path, none)), registry, data_dir=tmp_path, data="skip")


PAIRS_GRID = """
name = "pairs"
[base]
backbone = "lba_convnet"
n_labeled = 100
[[zip]]
method = ["supervised", "lba", "supervised", "supervised", "lba", "supervised"]
task = ["domain_adaptation", "domain_adaptation", "ssl", "domain_adaptation", "domain_adaptation", "ssl"]
dataset = ["digits", "digits", "digits_inverted", "digits_inverted", "digits_inverted", "digits"]
target = ["digits_inverted", "digits_inverted", "", "digits", "digits", ""]
[axes]
seed = [0, 1, 2]
[[table]]
name = "da"
rows = "method"
columns = "target"
where = { task = "domain_adaptation" }
coverage = { source_only = { method = "supervised", task = "domain_adaptation", target = "{column}" }, target_only = { task = "ssl", dataset = "{column}" } }
"""


def test_coverage_per_column_uses_each_pairs_own_bounds(registry):
    """Two domain pairs in one table: "{column}" in the coverage filters gives each column its
    own source-only and target-only values (pooled bounds would mix the pairs)."""
    grid, runs = grid_of(PAIRS_GRID, registry)
    assert len(runs) == 18
    by_run = {("supervised", "domain_adaptation", "digits_inverted"): [29.0, 30.0, 31.0],
              ("lba", "domain_adaptation", "digits_inverted"): [15.0] * 3,
              ("supervised", "ssl", "digits_inverted"): [10.0] * 3,
              ("supervised", "domain_adaptation", "digits"): [60.0] * 3,
              ("lba", "domain_adaptation", "digits"): [35.0] * 3,
              ("supervised", "ssl", "digits"): [10.0] * 3}
    rows = pd.DataFrame([{"run_id": r.run_id, "status": "ok",
                          "test_error": by_run[(r.flat()["method"], r.flat()["task"],
                                                r.flat()["target"] or r.flat()["dataset"])][r.flat()["seed"]]}
                         for r in runs])
    frame, note = table_frame(grid.tables[0], runs, rows)
    assert list(frame.columns) == ["digits_inverted", "digits", "digits_inverted coverage %", "digits coverage %"]
    assert frame.loc["lba", "digits_inverted coverage %"] == "75.0"  # (15 - 30) / (10 - 30)
    assert frame.loc["lba", "digits coverage %"] == "50.0"  # (35 - 60) / (10 - 60)
    assert frame.loc["supervised", "digits coverage %"] == "0.0"
    assert "digits_inverted: source only = 30.00 (3 runs), target only = 10.00 (3 runs)" in note
    assert "digits: source only = 60.00 (3 runs), target only = 10.00 (3 runs)" in note


def test_coverage_per_column_needs_bounds_for_every_column(tmp_path, registry):
    from ssl_bench.runner import prepare

    # the second pair's target-only run trains on the wrong data set: column "digits" has no bound
    text = PAIRS_GRID.replace(
        'dataset = ["digits", "digits", "digits_inverted", "digits_inverted", "digits_inverted", "digits"]',
        'dataset = ["digits", "digits", "digits_inverted", "digits_inverted", "digits_inverted", "digits_inverted"]')
    with pytest.raises(UserError, match=r"no run matches coverage\.target_only = .* for column 'digits'"):
        prepare(str(write_grid(tmp_path, text)), registry, data_dir=tmp_path, data="skip")


def test_where_takes_one_value_or_a_list_of_values():
    from ssl_bench.tables import matches

    run = {"method": "lmcs", "n_labeled": 20, "train_classes": [0, 1]}
    assert matches(run, {"method": "lmcs", "n_labeled": 20.0})
    assert matches(run, {"method": ["snowball", "lmcs"]}) and not matches(run, {"method": ["snowball"]})
    assert not matches(run, {"method": "lmcs", "n_labeled": 50})
    # a setting that is itself a list is compared whole, not by membership
    assert matches(run, {"train_classes": [0, 1]}) and not matches(run, {"train_classes": [0]})
    assert not matches(run, {"label": "x"})  # a key the run does not have


def test_a_number_in_a_string_column_is_stored_as_its_text():
    import pyarrow as pa

    schema = pa.schema([("datasets.svhn.extra_count", pa.string()), ("lr", pa.float64())])
    table = results_module.row_table({"datasets.svhn.extra_count": 5, "lr": 0.1}, schema)
    assert table.to_pylist() == [{"datasets.svhn.extra_count": "5", "lr": 0.1}]
    assert results_module.row_table({"datasets.svhn.extra_count": "all"}, schema).to_pylist()[0][
        "datasets.svhn.extra_count"] == "all"


# ------------------------------------------------------------------------------ metrics as the columns
METRIC_COLUMNS_GRID = """
name = "mc"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
task = "retrieval"
metrics = ["recall@1", "recall@2", "map_at_r"]
[axes]
n_labeled = [20, 50]
seed = [0, 1]
[[table]]
name = "recall"
rows = "n_labeled"
columns = "metric"
metrics = ["test_recall@1", "test_recall@2", "test_map_at_r"]
statistic = "mean"
spread = "none"
format = ".1f"
reference = "ref.csv"
"""


def test_metrics_as_columns_give_one_column_per_metric_and_count_each_run_once(registry, tmp_path):
    (tmp_path / "ref.csv").write_text("table,row,column,value,spread,source\nrecall,20,recall@2,70.0,,paper\n")
    grid, runs = grid_of(METRIC_COLUMNS_GRID, registry, path=tmp_path / "mc.toml")
    spec = grid.tables[0]
    assert spec.metrics and spec.metric == "test_recall@1"
    by = {(r.config["n_labeled"], r.config["seed"]): r.run_id for r in runs}
    rows = pd.DataFrame([
        {"run_id": by[(20, 0)], "status": "ok", "test_recall@1": 60.0, "test_recall@2": 70.0, "test_map_at_r": 10.0},
        {"run_id": by[(20, 1)], "status": "ok", "test_recall@1": 64.0, "test_recall@2": 74.0, "test_map_at_r": 20.0},
        {"run_id": by[(50, 0)], "status": "failed", "test_recall@1": NAN, "test_recall@2": NAN, "test_map_at_r": NAN},
    ])
    frame, note = table_frame(spec, runs, rows)
    assert list(frame.columns) == ["recall@1", "recall@2", "map_at_r"]
    assert frame.loc["20"].tolist() == ["62.0", "72.0", "15.0"]
    assert frame.loc["50"].tolist() == [MISSING] * 3
    # one failed and one missing run, though each shows in three cells
    assert "Excluded: 1 failed run(s)." in note and "Missing: 1 run(s)" in note
    assert "test_recall@1, test_recall@2, test_map_at_r, of the final model" in note
    compared = table_frame(spec, runs, rows, compare=True)[0]
    assert compared.loc["20", "recall@2 paper"] == "70.0" and compared.loc["20", "recall@2 diff"] == "+2.0"


def test_metrics_as_columns_need_both_keys(registry):
    text = METRIC_COLUMNS_GRID.replace('columns = "metric"\n', 'columns = "seed"\n')
    with pytest.raises(UserError, match='metrics as columns need columns = "metric" and metrics = a list'):
        grid_of(text, registry)
    text = METRIC_COLUMNS_GRID.replace('metrics = ["test_recall@1", "test_recall@2", "test_map_at_r"]\n', "")
    with pytest.raises(UserError, match='metrics as columns need columns = "metric"'):
        grid_of(text, registry)


# ------------------------------------------------------------------------------ printed row names
ROW_NAMES_GRID = """
name = "{name}"
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
n_unlabeled = 100
[axes]
n_labeled = [20, 50]
seed = [0, 1]
[[zip]]
label = ["lba (baseline)", "lba"]
methods.lba.visit_weight = [0.0, 1.0]
[[table]]
name = "t"
rows = "label"
columns = "n_labeled"
statistic = "mean"
spread = "none"
format = ".1f"
reference = "ref.csv"
{row_names}
"""


def test_row_names_print_another_papers_row_names_over_the_same_runs(registry, tmp_path):
    (tmp_path / "ref.csv").write_text("table,row,column,value,spread,source\nt,+ visit,20,5.0,,paper\n")
    _, first = grid_of(ROW_NAMES_GRID.format(name="a", row_names=""), registry, path=tmp_path / "a.toml")
    grid, runs = grid_of(ROW_NAMES_GRID.format(name="b", row_names='row_names = { "lba (baseline)" = "Baseline", '
                                                                   'lba = "+ visit" }'),
                         registry, path=tmp_path / "b.toml")
    assert [r.run_id for r in runs] == [r.run_id for r in first]  # the same runs: one training serves both
    spec = grid.tables[0]
    rows = pd.DataFrame([{"run_id": r.run_id, "status": "ok",
                          "test_error": 10.0 * r.config["methods"]["lba"]["visit_weight"] + r.config["seed"]}
                         for r in runs])
    frame = frame_of(spec, runs, rows, compare=True)
    assert list(frame.index) == ["Baseline", "+ visit"]
    assert frame.loc["Baseline", "20 ours"] == "0.5" and frame.loc["+ visit", "20 ours"] == "10.5"
    assert frame.loc["+ visit", "20 paper"] == "5.0" and frame.loc["+ visit", "20 diff"] == "+5.5"
    assert list(frame_of(grid_of(ROW_NAMES_GRID.format(name="a", row_names=""), registry,
                                 path=tmp_path / "a.toml")[0].tables[0], first, rows).index) == ["lba (baseline)", "lba"]


@pytest.mark.parametrize("row_names, message", [
    ('row_names = { lbaa = "+ visit" }',
     "row_names renames ['lbaa'], which no run it shows has as its 'label'; those are ['lba', 'lba (baseline)']"),
    ('row_names = { lba = "lba (baseline)" }',
     "row_names prints ['lba (baseline)'], which is also a row of its own; two rows would merge"),
    ('row_names = { lba = "x", "lba (baseline)" = "x" }', "row_names must map row values to distinct, non-empty"),
    ('row_names = ["lba"]', "row_names must map row values to distinct, non-empty"),
])
def test_row_names_errors_come_before_training(tmp_path, row_names, message):
    (tmp_path / "ref.csv").write_text("table,row,column,value,spread,source\n")
    path = write_grid(tmp_path, ROW_NAMES_GRID.format(name="rn", row_names=row_names))
    result = cli("run", "--grid", str(path), "--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize("first, second, shared", [
    ("tac_ccl_table4_1", "tac_ccl_table4_4", 20),  # CUB and Cars: Baseline and +TAC, 5 seeds
    ("tac_ccl_table4_2", "tac_ccl_table4_4", 10),  # SOP
    ("san_table5_1", "san_table5_4", 10),  # supervised CUB: Baseline and + SAN
    ("san_table5_2", "san_table5_4", 20),  # unsupervised CUB and SOP
    ("lmcs_table3_8", "lmcs_table3_10", 5),  # no discovery, 100 labels
    ("lmcs_table3_4", "lmcs_table3_10", 15),  # the full LMCS at 80, 100 and 250 labels
])
def test_paper_tables_that_print_the_same_cells_share_their_runs(registry, first, second, shared):
    from ssl_bench.grid import load_grid
    from ssl_bench.runner import find_grid

    ids = [{r.run_id for r in expand(load_grid(find_grid(name, registry)), registry)} for name in (first, second)]
    assert len(ids[0] & ids[1]) == shared
