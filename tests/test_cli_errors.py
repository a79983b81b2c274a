"""Every bad-input path of the CLI: exit status 2, exactly one ``ssl-bench: error: ...`` line on
stderr that names the problem, no traceback, and nothing written.

Each case is a real ``ssl-bench`` subprocess (the ``cli`` helper). Starting one costs 2-3 CPU
seconds (``import ssl_bench`` imports torch), so the module-scoped ``outcomes`` fixture starts the
subprocesses of all selected cases at once in a thread pool and the tests only inspect the
outcomes. Every case runs in its own empty working directory with ``--out <that dir>/out``:
afterwards the output directory must not exist and the working directory must still be empty.
A few cases (ON_EXISTING_RESULTS) also run against an output directory that already holds the
results of an earlier real run of the same grid, whose files must stay byte-identical.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import TINY_GRID, cli, write_grid

HAS_CUDA = torch.cuda.is_available()


@dataclasses.dataclass(frozen=True)
class Case:
    #: CLI arguments; ``{name}`` placeholders are grid files written by ``grid_files``
    args: tuple[str, ...]
    #: words the error line must contain (case-insensitive)
    words: tuple[str, ...]
    skip: str | None = None


def _variant(old: str, new: str) -> str:
    assert old in TINY_GRID
    return TINY_GRID.replace(old, new, 1)


#: grid files the cases refer to, by placeholder name
GRID_TEXTS = {
    "tiny": TINY_GRID,
    "malformed": '[base\ndataset = "digits"\n',
    "unknown_method": _variant('method = "lba"', 'method = "nope_method"'),
    "unknown_backbone": _variant('backbone = "lba_convnet"', 'backbone = "nope_net"'),
    "unknown_dataset": _variant('dataset = "digits"', 'dataset = "nope_data"'),
    "table_bad_rows": _variant('rows = "n_labeled"', 'rows = "n_labelled"'),
}

TINY = ("run", "--grid", "{tiny}")

CASES: dict[str, Case] = {
    "unknown-grid-name": Case(("run", "--grid", "no_such_grid"), ("unknown", "grid", "no_such_grid")),
    "grid-path-missing": Case(("run", "--grid", "{dir}/no_such_file.toml"), ("no_such_file.toml", "does not exist")),
    "grid-malformed-toml": Case(("run", "--grid", "{malformed}"), ("malformed.toml", "not valid toml")),
    "unknown-method-in-grid": Case(("run", "--grid", "{unknown_method}"), ("unknown", "method", "nope_method")),
    "unknown-backbone-in-grid": Case(("run", "--grid", "{unknown_backbone}"), ("unknown", "backbone", "nope_net")),
    "unknown-dataset-in-grid": Case(("run", "--grid", "{unknown_dataset}"), ("unknown", "data", "nope_data")),
    "unknown-method-via-set": Case(TINY + ("--set", "method=nope_method"), ("unknown", "method", "nope_method")),
    "unknown-set-key": Case(TINY + ("--set", "stpes=3"), ("unknown", "stpes")),
    "set-without-equals": Case(TINY + ("--set", "steps"), ("--set", "steps", "key=value")),
    "unknown-method-hyperparameter": Case(TINY + ("--set", "methods.lba.visit_wieght=1"),
                                          ("unknown", "methods.lba.visit_wieght")),
    "method-hyperparameter-wrong-type": Case(TINY + ("--set", 'methods.lba.visit_weight="high"'),
                                             ("methods.lba.visit_weight", "number", "high")),
    # digits has 1297 training images, the smallest class 126 of them
    "labeled-above-class-size": Case(TINY + ("--set", "n_labeled=2000"), ("n_labeled=2000", "per class", "126")),
    "labeled-not-multiple-of-classes": Case(TINY + ("--set", "n_labeled=25"), ("n_labeled=25", "multiple", "10")),
    "labeled-negative": Case(TINY + ("--set", "n_labeled=-10"), ("n_labeled", "-10", "non-negative")),
    "unlabeled-negative": Case(TINY + ("--set", "n_unlabeled=-5"), ("n_unlabeled", "-5", "non-negative")),
    "unlabeled-above-train-size": Case(TINY + ("--set", "n_unlabeled=5000"), ("n_unlabeled=5000", "1297")),
    "table-rows-missing-key": Case(("run", "--grid", "{table_bad_rows}"), ("table", "'t'", "n_labelled")),
    "device-cuda-unavailable": Case(TINY + ("--device", "cuda"), ("--device cuda", "cuda", "not available"),
                                    skip="CUDA is available here" if HAS_CUDA else None),
    "show-unknown-run-id": Case(("show", "deadbeef0000"), ("no run", "deadbeef0000")),
    "table-compare-without-reference": Case(("table", "--grid", "{tiny}", "--compare"),
                                            ("table 't'", "no reference")),
}

#: cases only run against an output directory holding earlier results (see ON_EXISTING_RESULTS)
EXTRA_CASES: dict[str, Case] = {
    # below the 1297 training images in total, but 127 per class > the smallest class (126)
    "labeled-above-smallest-class": Case(TINY + ("--set", "n_labeled=1270"), ("n_labeled=1270", "per class", "126")),
}

#: cases repeated against an output directory holding an earlier real run of the same grid ("tiny").
#: Each subprocess costs 2-3 CPU-seconds (importing torch), so this is a subset: one failing while
#: the grid is expanded, one in the check against the data set (the last check before training
#: would write), and the read-only `table --compare`.
ON_EXISTING_RESULTS = ("unknown-method-via-set", "labeled-above-smallest-class", "table-compare-without-reference")
ALL_CASES = {**CASES, **EXTRA_CASES}

#: grid -> (--grid argument, number of runs it expands to)
DRY_RUNS = {"tiny": ("{tiny}", 8), "digits_table3": ("digits_table3", 60)}

WORKERS = max(2, min(6, 2 * (os.cpu_count() or 1)))
EARLIER_RUN_SETS = ("steps=2", "eval_every=1", "n_unlabeled=0", "seed=0")  # 2 runs of 2 steps


@dataclasses.dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    workdir: Path  # the subprocess's working directory; holds only --out (if anything)
    out: Path
    before: dict[str, bytes] | None = None  # the files of --out before the command, if it existed


def _selected(request, argname: str) -> list[str]:
    """The values of parameter ``argname`` of this module's tests selected in this session, so
    that a ``-k`` run starts only the subprocesses it needs."""
    chosen = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec and argname in callspec.params:
            chosen.add(callspec.params[argname])
    return sorted(chosen)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("grids")
    files = {name: str(write_grid(root, text, f"{name}.toml")) for name, text in GRID_TEXTS.items()}
    files["dir"] = str(root)
    return files


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, grid_files) -> dict[tuple[str, str], Outcome]:
    """Every selected command of this module, run concurrently, keyed by (group, name):
    ("fresh", case) with a --out that does not exist, ("dry", grid) for the dry runs, and
    ("existing", case) against a copy of the results of an earlier real run of the tiny grid."""
    def workdir_out(label: str) -> tuple[Path, Path]:
        workdir = tmp_path_factory.mktemp(label)
        return workdir, workdir / "out"

    def args(case_args: tuple[str, ...], out: Path) -> tuple[str, ...]:
        return tuple(a.format(**grid_files) for a in case_args) + ("--out", str(out))

    jobs: dict[tuple[str, str], tuple[tuple[str, ...], Path, Path]] = {}
    for name in _selected(request, "case"):
        if not CASES[name].skip:
            workdir, out = workdir_out(f"fresh-{name}")
            jobs["fresh", name] = (args(CASES[name].args, out), workdir, out)
    for name in _selected(request, "dry"):
        workdir, out = workdir_out(f"dry-{name}")
        jobs["dry", name] = (args(("run", "--grid", DRY_RUNS[name][0], "--dry-run"), out), workdir, out)
    existing = [n for n in _selected(request, "existing_case") if not ALL_CASES[n].skip]

    results: dict[tuple[str, str], Outcome] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        earlier = None
        if existing:
            earlier_out = tmp_path_factory.mktemp("earlier") / "out"
            sets = [x for s in EARLIER_RUN_SETS for x in ("--set", s)]
            earlier = pool.submit(cli, "run", "--grid", grid_files["tiny"], "--out", str(earlier_out),
                                  "--no-progress", *sets)
        futures = {key: (pool.submit(cli, *a, cwd=w), w, o, None) for key, (a, w, o) in jobs.items()}
        if earlier is not None:
            proc = earlier.result()
            assert proc.returncode == 0, f"the earlier run failed:\n{proc.stderr}"
            assert len(list((earlier_out / "tiny" / "runs").glob("*.parquet"))) == 2, proc.stderr
            for name in existing:
                workdir, out = workdir_out(f"existing-{name}")
                shutil.copytree(earlier_out, out)
                futures["existing", name] = (pool.submit(cli, *args(ALL_CASES[name].args, out), cwd=workdir),
                                             workdir, out, _snapshot(out))
        for key, (future, workdir, out, before) in futures.items():
            results[key] = Outcome(future.result(), workdir, out, before)
    return results


def assert_one_clear_error(proc: subprocess.CompletedProcess, words: tuple[str, ...]) -> None:
    detail = f"\nexit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("ssl-bench: error: "), detail
    message = lines[0].lower()
    missing = [w for w in words if w.lower() not in message]
    assert not missing, f"the error line lacks {missing}: {lines[0]}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, outcomes):
    spec = CASES[case]
    if spec.skip:
        pytest.skip(spec.skip)
    outcome = outcomes["fresh", case]
    assert_one_clear_error(outcome.proc, spec.words)
    assert not outcome.out.exists(), f"{case} created {outcome.out}: {sorted(_snapshot(outcome.out))}"
    assert list(outcome.workdir.iterdir()) == [], "the command wrote into its working directory"


@pytest.mark.parametrize("existing_case", ON_EXISTING_RESULTS)
def test_bad_input_leaves_earlier_results_byte_identical(existing_case, outcomes):
    spec = ALL_CASES[existing_case]
    if spec.skip:
        pytest.skip(spec.skip)
    outcome = outcomes["existing", existing_case]
    assert_one_clear_error(outcome.proc, spec.words)
    before = outcome.before
    assert sum(k.startswith("tiny/runs/") for k in before) == 2 and sum(k.startswith("tiny/curves/") for k in before) == 2
    after = _snapshot(outcome.out)
    assert sorted(after) == sorted(before), "files were added or removed"
    assert [k for k in after if after[k] != before[k]] == [], "files changed"
    assert [p.name for p in outcome.workdir.iterdir()] == ["out"]


@pytest.mark.parametrize("dry", sorted(DRY_RUNS))
def test_dry_run_prints_expanded_runs_and_writes_nothing(dry, outcomes):
    _, expected = DRY_RUNS[dry]
    outcome = outcomes["dry", dry]
    proc = outcome.proc
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"{expected} runs in grid {dry}"
    run_lines = [line for line in lines[:-1] if re.fullmatch(r"[0-9a-f]{12}\t.*n_labeled=.*n_unlabeled=.*seed=.*", line)]
    assert len(run_lines) == len(lines) - 1 == expected, proc.stdout
    assert len({line.split("\t")[0] for line in run_lines}) == expected, "run ids are not distinct"
    assert not outcome.out.exists()
    assert list(outcome.workdir.iterdir()) == []


def test_usage_errors_are_one_line_too(tmp_path):
    proc = cli("table", "--grid", "digits_table3", "--format", "xml", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: argument --format: invalid choice: 'xml'")
    assert not (tmp_path / "out").exists()


def test_missing_grid_path_without_suffix_says_it_does_not_exist(tmp_path):
    proc = cli("run", "--grid", str(tmp_path / "nowhere" / "grid"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ssl-bench: error: grid file {tmp_path / 'nowhere' / 'grid'} does not exist"


def test_help_starts_without_importing_torch():
    code = ("import sys\nfrom ssl_bench.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['table', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'pyarrow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    # the lazy public API still answers, and names what it lacks
    check = subprocess.run([sys.executable, "-c", "import ssl_bench\nfrom ssl_bench import Method, read_runs\n"
                            "print(Method.__name__, read_runs.__name__, 'Method' in dir(ssl_bench))\n"
                            "ssl_bench.nope"], capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "Method read_runs True"
    assert "module 'ssl_bench' has no attribute 'nope'" in check.stderr
