"""Grid files (ssl_bench/grid.py): parsing, cartesian/zip/exclude expansion, run ids,
overrides and the errors a user sees, against the real plugin registry."""
from __future__ import annotations

import datetime
import math
import textwrap
import tomllib

import pytest

from ssl_bench import UserError
from ssl_bench.grid import expand, identity, load_grid, parse_grid, parse_value, run_id_of
from ssl_bench.registry import load_registry

from conftest import TINY_GRID, write_grid


@pytest.fixture(scope="module")
def reg():
    return load_registry()


def grid_of(text: str, **kwargs):
    return parse_grid(tomllib.loads(textwrap.dedent(text)), **kwargs)


def runs_of(text: str, reg, **kwargs):
    return expand(grid_of(text, **kwargs), reg)


def ids(runs) -> list[str]:
    return [r.run_id for r in runs]


BASE = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
labeled_per_class = 2
"""


def with_base(extra: str, base: str = BASE) -> str:
    return textwrap.dedent(base) + textwrap.dedent(extra)


# --------------------------------------------------------------------------- expansion
def test_tiny_grid_cartesian_count_and_order(tiny_grid, reg):
    grid = load_grid(tiny_grid)
    assert grid.name == "tiny" and grid.path == tiny_grid
    assert grid.axis_keys == ["n_labeled", "n_unlabeled", "seed"]
    runs = expand(grid, reg)
    assert len(runs) == 8
    # file order, the last axis varying fastest
    assert [(r.config["n_labeled"], r.config["n_unlabeled"], r.config["seed"]) for r in runs] == [
        (20, 0, 0), (20, 0, 1), (20, 100, 0), (20, 100, 1),
        (50, 0, 0), (50, 0, 1), (50, 100, 0), (50, 100, 1)]
    assert len(set(ids(runs))) == 8


def test_resolved_config_is_fully_defaulted(tiny_grid, reg):
    run = expand(load_grid(tiny_grid), reg)[0]
    config = run.config
    assert config["method"] == "lba" and config["backbone"] == "lba_convnet" and config["dataset"] == "digits"
    assert config["methods"] == {"lba": {"walker_weight": 1.0, "visit_weight": 1.0, "log_epsilon": 1e-8}}
    assert config["backbones"] == {"lba_convnet": {"widths": [4], "convs_per_stage": 2, "embedding_dim": 8}}
    assert config["datasets"] == {"digits": {}}
    # protocol defaults filled in
    assert config["optimizer"] == "adam" and config["lr"] == 1e-3 and config["unlabeled_overlap"] is True
    assert config["steps"] == 12 and config["labeled_per_class"] == 2
    flat = run.flat()
    assert flat["methods.lba.visit_weight"] == 1.0 and flat["backbones.lba_convnet.widths"] == [4]
    assert run.run_id == run_id_of(identity(config, reg))


def test_axis_order_follows_the_file(reg):
    runs = runs_of(with_base("""
        [axes]
        seed = [3, 1]
        n_labeled = [20, "all"]
        """), reg)
    assert [(r.config["seed"], r.config["n_labeled"]) for r in runs] == [(3, 20), (3, "all"), (1, 20), (1, "all")]


def test_cartesian_product_of_three_axes_with_a_method_parameter(reg):
    runs = runs_of(with_base("""
        [axes]
        n_labeled = [20, 50, 100]
        seed = [0, 1]
        [axes.methods.lba]
        visit_weight = [0, 0.25, 0.5, 1]
        """), reg)
    assert len(runs) == 3 * 2 * 4
    assert [r.config["methods"]["lba"]["visit_weight"] for r in runs[:4]] == [0.0, 0.25, 0.5, 1.0]
    assert all(type(r.config["methods"]["lba"]["visit_weight"]) is float for r in runs)
    assert runs[4].config["seed"] == 1 and runs[8].config["n_labeled"] == 50


def test_no_axes_is_one_run(reg):
    runs = runs_of(BASE, reg)
    assert len(runs) == 1 and runs[0].config["steps"] == 1000 and runs[0].config["labeled_per_class"] == 2


def test_zip_axes_vary_together(reg):
    grid = grid_of(with_base("""
        [axes]
        seed = [0, 1, 2]
        [[zip]]
        method = ["supervised", "lba"]
        lr = [1e-3, 3e-4]
        """))
    assert grid.axis_keys == ["seed", "method", "lr"]
    runs = expand(grid, reg)
    assert len(runs) == 3 * 2
    assert [(r.config["seed"], r.config["method"], r.config["lr"]) for r in runs] == [
        (0, "supervised", 1e-3), (0, "lba", 3e-4), (1, "supervised", 1e-3), (1, "lba", 3e-4),
        (2, "supervised", 1e-3), (2, "lba", 3e-4)]
    # each run carries the parameters of its own method only
    assert runs[0].config["methods"] == {"supervised": {}}
    assert set(runs[1].config["methods"]) == {"lba"}


def test_two_zips_are_crossed(reg):
    runs = runs_of(with_base("""
        [[zip]]
        n_labeled = [20, 50]
        labeled_per_class = [2, 5]
        [[zip]]
        seed = [0, 1, 2]
        lr = [0.1, 0.01, 0.001]
        """), reg)
    assert [(r.config["n_labeled"], r.config["labeled_per_class"], r.config["seed"], r.config["lr"]) for r in runs] == [
        (20, 2, 0, 0.1), (20, 2, 1, 0.01), (20, 2, 2, 0.001), (50, 5, 0, 0.1), (50, 5, 1, 0.01), (50, 5, 2, 0.001)]


def test_exclude_drops_matching_runs(tiny_grid, reg):
    text = tiny_grid.read_text() + textwrap.dedent("""
        [[exclude]]
        n_labeled = 50
        n_unlabeled = 0
        """)
    runs = expand(parse_grid(tomllib.loads(text)), reg)
    assert len(runs) == 6
    assert not any(r.config["n_labeled"] == 50 and r.config["n_unlabeled"] == 0 for r in runs)
    assert sum(r.config["n_labeled"] == 50 for r in runs) == 2


def test_several_excludes_and_non_matching_exclude(tiny_grid, reg):
    text = tiny_grid.read_text() + textwrap.dedent("""
        [[exclude]]
        seed = 1
        [[exclude]]
        n_labeled = 20
        n_unlabeled = 100
        [[exclude]]
        n_labeled = 30
        """)
    runs = expand(parse_grid(tomllib.loads(text)), reg)
    assert [(r.config["n_labeled"], r.config["n_unlabeled"], r.config["seed"]) for r in runs] == [
        (20, 0, 0), (50, 0, 0), (50, 100, 0)]


def test_exclude_on_a_method_parameter(reg):
    runs = runs_of(with_base("""
        [axes]
        n_unlabeled = [0, 100]
        [axes.methods.lba]
        visit_weight = [0.5, 1.0]
        [[exclude]]
        n_unlabeled = 0
        methods.lba.visit_weight = 1
        """), reg)
    assert [(r.config["n_unlabeled"], r.config["methods"]["lba"]["visit_weight"]) for r in runs] == [
        (0, 0.5), (100, 0.5), (100, 1.0)]


def test_exclude_matches_a_key_left_at_its_default(reg):
    # unlabeled_overlap defaults to true: spelling it out must not change which runs exist
    extra = """
        [axes]
        n_labeled = [20, "all"]
        [[exclude]]
        n_labeled = "all"
        unlabeled_overlap = true
        """
    spelled = runs_of(with_base(extra, BASE + "unlabeled_overlap = true\n"), reg)
    implicit = runs_of(with_base(extra), reg)
    assert [r.config["n_labeled"] for r in spelled] == [20]
    assert ids(implicit) == ids(spelled)


def test_duplicate_resolved_runs_are_dropped(reg):
    # 1 and 1.0 are the same visit weight: one run, not two
    runs = runs_of(with_base("""
        [axes.methods.lba]
        visit_weight = [1, 1.0, 0.5]
        """), reg)
    assert [r.config["methods"]["lba"]["visit_weight"] for r in runs] == [1.0, 0.5]


def _unpruned(grid, reg) -> list[str]:
    """The run ids of the plain product of the axes, first occurrence kept (what expand returns)."""
    import itertools

    from ssl_bench.grid import resolve
    out: list[str] = []
    for combo in itertools.product(*grid.axes):
        flat = dict(grid.base)
        for assignment in combo:
            flat.update(assignment)
        run_id = run_id_of(identity(resolve(flat, reg), reg))
        if run_id not in out:
            out.append(run_id)
    return out


@pytest.mark.parametrize("knobs_first", [False, True])
def test_each_methods_knob_is_swept_for_that_method_only(reg, knobs_first):
    knobs = """
        methods.vat.eps = [0.3, 1.0, 3.0]
        methods.pi_model.weight = [1.0, 10.0]
        """
    method = """
        method = ["supervised", "vat", "pi_model"]
        seed = [0, 1]
        """
    grid = grid_of(with_base("[axes]\n" + (textwrap.dedent(knobs) + textwrap.dedent(method) if knobs_first
                                           else textwrap.dedent(method) + textwrap.dedent(knobs))))
    runs = expand(grid, reg)
    # (1 supervised + 3 vat + 2 pi_model settings) x 2 seeds, in the plain product's order
    assert len(runs) == 12
    assert ids(runs) == _unpruned(grid, reg)
    vat = sorted({r.config["methods"]["vat"]["eps"] for r in runs if r.config["method"] == "vat"})
    assert vat == [0.3, 1.0, 3.0]
    assert all(set(r.config["methods"]) == {r.config["method"]} for r in runs)


def test_many_knob_axes_do_not_multiply_combinations(reg):
    # 8 knob axes of 4 values: the plain product would be 3 x 4^8 = 196,608 combinations
    knobs = "\n".join(f"methods.{m}.{k} = [0.5, 1.0, 2.0, 4.0]" for m, k in [
        ("vat", "eps"), ("vat", "weight"), ("pi_model", "weight"), ("entmin", "weight"), ("mixup", "alpha"),
        ("mixup", "weight"), ("fixmatch", "weight"), ("mean_teacher", "consistency_weight")])
    runs = runs_of(with_base(f"[axes]\nmethod = [\"vat\", \"entmin\", \"mixup\"]\n{knobs}\n"), reg)
    assert len(runs) == 16 + 4 + 16


def test_an_excluded_knob_axis_is_not_pruned(reg):
    # an [[exclude]] may name the knob: its axis is enumerated in full, so the exclude sees it
    runs = runs_of(with_base("""
        [axes]
        method = ["supervised", "vat"]
        methods.vat.eps = [0.3, 1.0]
        [[exclude]]
        methods.vat.eps = 0.3
        """), reg)
    assert [(r.config["method"], r.config["methods"].get("vat", {}).get("eps")) for r in runs] == [
        ("supervised", None), ("vat", 1.0)]


# --------------------------------------------------------------------------- run ids
def test_run_id_of_is_a_stable_hash():
    config = {"a": 1, "b": {"c": 0.5, "d": "x"}}
    rid = run_id_of(config)
    assert len(rid) == 12 and all(c in "0123456789abcdef" for c in rid)
    assert run_id_of({"b": {"d": "x", "c": 0.5}, "a": 1}) == rid  # key order does not matter
    assert run_id_of({"a": 2, "b": {"c": 0.5, "d": "x"}}) != rid
    assert run_id_of({"a": 1, "b": {"c": 0.5, "d": "y"}}) != rid
    assert run_id_of({"a": 1, "b": {"c": 0.25, "d": "x"}}) != rid


def test_run_ids_stable_across_parses(tiny_grid, reg):
    first = ids(expand(load_grid(tiny_grid), reg))
    second = ids(expand(load_grid(tiny_grid), load_registry()))
    assert first == second


def test_run_id_is_sha256_of_canonical_json(reg):
    # The id is sha256 of the canonical JSON of the resolved config, truncated to 12 hex digits;
    # an accidental change of the id scheme (which orphans every stored result) fails here.
    run = runs_of(BASE, reg)[0]
    assert run.run_id == run_id_of(identity(run.config, reg))
    import hashlib
    import json

    canonical = json.dumps(identity(run.config, reg), sort_keys=True, separators=(",", ":"))
    assert run.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:12]


@pytest.mark.parametrize("spelled_out", [
    "unlabeled_overlap = true\nlr = 0.001\noptimizer = \"adam\"\nseed = 0\nn_labeled = \"all\"\n",
    "[base.methods.lba]\nvisit_weight = 1.0\n",
    "[base.methods.lba]\nvisit_weight = 1\nwalker_weight = 1\nlog_epsilon = 1e-8\n",
    "[base.backbones.lba_convnet]\nwidths = \"32,64,128\"\nconvs_per_stage = 2\nembedding_dim = 128\n",
    "[base.datasets.digits]\n",
])
def test_run_id_unchanged_when_defaults_are_spelled_out(reg, spelled_out):
    plain = ids(runs_of(BASE, reg))
    # the spelled-out text must land inside [base] (protocol keys) or after it (sections)
    explicit = ids(runs_of(BASE + spelled_out, reg))
    assert explicit == plain


@pytest.mark.parametrize("changed", [
    "steps = 11\n",
    "seed = 1\n",
    "unlabeled_overlap = false\n",
    "n_labeled = 20\n",
    "lr = 0.0011\n",
    "[base.methods.lba]\nvisit_weight = 0.5\n",
    "[base.methods.lba]\nlog_epsilon = 1e-7\n",
    "[base.backbones.lba_convnet]\nembedding_dim = 64\n",
])
def test_run_id_changes_with_any_value(reg, changed):
    assert ids(runs_of(BASE + changed, reg)) != ids(runs_of(BASE, reg))


def test_run_id_changes_with_method_backbone_and_dataset_names(reg):
    plain = ids(runs_of(BASE, reg))[0]
    assert ids(runs_of(BASE.replace('method = "lba"', 'method = "supervised"'), reg))[0] != plain
    assert ids(runs_of(BASE.replace('backbone = "lba_convnet"', 'backbone = "lba_mnist"'), reg))[0] != plain


def test_run_id_ignores_sections_of_unused_plugins(reg):
    supervised = BASE.replace('method = "lba"', 'method = "supervised"')
    plain = runs_of(supervised, reg)
    with_lba_section = runs_of(supervised + "[base.methods.lba]\nvisit_weight = 0.5\n", reg)
    with_backbone_section = runs_of(supervised + "[base.backbones.lba_mnist]\nembedding_dim = 16\n", reg)
    assert ids(with_lba_section) == ids(plain) == ids(with_backbone_section)
    assert plain[0].config["methods"] == {"supervised": {}}
    assert "lba_mnist" not in with_backbone_section[0].config["backbones"]


def test_sections_of_unused_plugins_are_still_validated(reg):
    supervised = BASE.replace('method = "lba"', 'method = "supervised"')
    with pytest.raises(UserError, match=r"unknown method 'nope'"):
        runs_of(supervised + "[base.methods.nope]\nx = 1\n", reg)
    with pytest.raises(UserError, match=r"unknown key methods\.lba\.bogus; known keys: log_epsilon, visit_weight, "
                                        r"walker_weight"):
        runs_of(supervised + "[base.methods.lba]\nbogus = 1\n", reg)
    with pytest.raises(UserError, match=r"methods\.lba\.visit_weight must be >= 0, got -1\.0"):
        runs_of(supervised + "[base.methods.lba]\nvisit_weight = -1\n", reg)


def test_run_ids_sweep_matches_single_runs(reg):
    # a run in a sweep has the same id as the same run written out alone
    swept = runs_of(with_base("""
        [axes.methods.lba]
        visit_weight = [0.25, 0.5]
        """), reg)
    alone = runs_of(BASE + "[base.methods.lba]\nvisit_weight = 0.5\n", reg)
    assert swept[1].run_id == alone[0].run_id
    assert swept[0].run_id != alone[0].run_id


# --------------------------------------------------------------------------- overrides
def test_override_changes_every_run(tiny_grid, reg):
    plain = expand(load_grid(tiny_grid), reg)
    overridden = expand(load_grid(tiny_grid, overrides={"steps": 5}), reg)
    assert len(overridden) == 8
    assert all(r.config["steps"] == 5 for r in overridden)
    assert not set(ids(plain)) & set(ids(overridden))
    # same as writing it into the file
    written = expand(parse_grid(tomllib.loads(TINY_GRID.replace("steps = 12", "steps = 5"))), reg)
    assert ids(written) == ids(overridden)


def test_override_of_an_axis_collapses_it(tiny_grid, reg):
    grid = load_grid(tiny_grid, overrides={"n_labeled": 50})
    assert grid.axis_keys == ["n_unlabeled", "seed"]
    runs = expand(grid, reg)
    assert len(runs) == 4
    assert all(r.config["n_labeled"] == 50 for r in runs)
    full = expand(load_grid(tiny_grid), reg)
    assert ids(runs) == [r.run_id for r in full if r.config["n_labeled"] == 50]


def test_override_of_a_zipped_key_keeps_the_rest_of_the_zip(reg):
    runs = runs_of(with_base("""
        [[zip]]
        method = ["supervised", "lba"]
        lr = [1e-3, 3e-4]
        """), reg, overrides={"lr": 0.01})
    assert [(r.config["method"], r.config["lr"]) for r in runs] == [("supervised", 0.01), ("lba", 0.01)]


def test_override_of_a_method_parameter(tiny_grid, reg):
    runs = expand(load_grid(tiny_grid, overrides={"methods.lba.visit_weight": parse_value("0.25")}), reg)
    assert {r.config["methods"]["lba"]["visit_weight"] for r in runs} == {0.25}


def test_override_errors(tiny_grid, reg):
    with pytest.raises(UserError, match=r"--set stepz: unknown setting 'stepz'"):
        load_grid(tiny_grid, overrides={"stepz": 5})
    with pytest.raises(UserError, match=r"steps must be an int, got 'five'"):
        expand(load_grid(tiny_grid, overrides={"steps": parse_value("five")}), reg)


# --------------------------------------------------------------------------- errors
def error_of(text: str, reg=None, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        grid = grid_of(text, **kwargs)
        if reg is not None:
            expand(grid, reg)
    return str(info.value)


def test_unknown_top_level_key():
    message = error_of(with_base('nme = "x"\n', ""))
    assert "unknown top-level key(s) nme" in message
    assert "allowed: axes, base, description, exclude, name, smoke, table, zip" in message


def test_top_level_key_unknown_names_the_file(tmp_path):
    path = write_grid(tmp_path, "bogus = 1\n" + BASE)
    with pytest.raises(UserError, match=rf"grid {path}: unknown top-level key\(s\) bogus"):
        load_grid(path)


def test_list_in_base(reg):
    # a list is a value only for list-typed keys; elsewhere the message points to [axes]
    assert "seed must be int, got the list [0, 1]; to sweep it, put it under [axes]" in error_of(
        BASE + "seed = [0, 1]\n", reg)
    assert "methods.lba.visit_weight must be float, got the list [0, 1]" in error_of(
        BASE + "[base.methods.lba]\nvisit_weight = [0, 1]\n", reg)


def test_empty_axis():
    assert "axes.seed must be a non-empty list of values, got []" in error_of(with_base("[axes]\nseed = []\n"))
    assert "axes.seed must be a non-empty list of values, got 3" in error_of(with_base("[axes]\nseed = 3\n"))


def test_zip_with_unequal_lengths():
    message = error_of(with_base("""
        [[zip]]
        seed = [0, 1]
        lr = [0.1, 0.01, 0.001]
        """))
    assert "zip #1 must map keys to non-empty lists of equal length, got {'seed': 2, 'lr': 3}" in message
    assert "zip #1" in error_of(with_base("[[zip]]\nseed = [0, 1]\nlr = 0.1\n"))
    assert "zip #1" in error_of(with_base("[[zip]]\nseed = []\nlr = []\n"))


def test_key_swept_twice():
    message = error_of(with_base("""
        [axes]
        seed = [0, 1]
        [[zip]]
        seed = [2, 3]
        lr = [0.1, 0.01]
        """))
    assert "key 'seed' is swept twice (in [axes] or [[zip]])" in message
    assert "swept twice" in error_of(with_base("""
        [[zip]]
        lr = [0.1, 0.01]
        [[zip]]
        lr = [0.2, 0.02]
        """))


def test_unknown_setting_key():
    message = error_of(BASE + "stesp = 3\n")
    assert "grid: key 'stesp': unknown setting 'stesp'" in message
    assert "protocol keys" in message and "methods.NAME.KEY" in message
    assert "unknown setting 'n_labelled'" in error_of(with_base("[axes]\nn_labelled = [20]\n"))
    assert "unknown setting 'methods.visit_weight'" in error_of(BASE + "[base.methods]\nvisit_weight = 1.0\n")
    assert "unknown setting 'mystery'" in error_of(with_base("[[exclude]]\nmystery = 1\n"))


def test_unknown_method_parameter_key(reg):
    message = error_of(BASE + "[base.methods.lba]\nvisit_wieght = 1.0\n", reg)
    assert message == ("unknown key methods.lba.visit_wieght (did you mean 'visit_weight'?); "
                       "known keys: log_epsilon, visit_weight, walker_weight")
    assert "unknown key backbones.lba_convnet.width (did you mean 'widths'?)" in error_of(
        BASE + "[base.backbones.lba_convnet]\nwidth = \"8\"\n", reg)
    assert "unknown key datasets.digits.split; known keys: none" in error_of(
        BASE + "[base.datasets.digits]\nsplit = 1\n", reg)


@pytest.mark.parametrize("setting, message", [
    ('steps = "many"', "steps must be an int, got 'many'"),
    ("steps = 12.0", "steps must be an int, got 12.0"),
    ("steps = -1", "steps must be >= 0, got -1"),
    ("lr = true", "lr must be a number, got True"),
    ('unlabeled_overlap = "yes"', "unlabeled_overlap must be true or false, got 'yes'"),
    ("n_labeled = -20", 'n_labeled must be a non-negative int or "all", got -20'),
    ('n_unlabeled = "most"', 'n_unlabeled must be a non-negative int or "all", got \'most\''),
    ('optimizer = "rmsprop"', "optimizer must be one of 'adam', 'sgd', got 'rmsprop'"),
])
def test_wrong_type_of_protocol_value(reg, setting, message):
    assert message in error_of(BASE + setting + "\n", reg)


def test_wrong_type_of_plugin_value(reg):
    assert "methods.lba.visit_weight must be a number, got 'high'" in error_of(
        BASE + "[base.methods.lba]\nvisit_weight = \"high\"\n", reg)
    assert "backbones.lba_convnet.embedding_dim must be an int, got 1.5" in error_of(
        BASE + "[base.backbones.lba_convnet]\nembedding_dim = 1.5\n", reg)


def test_wrong_value_in_an_axis_is_reported(reg):
    message = error_of(with_base("[axes]\nseed = [0, -1]\n"), reg)
    assert "seed must be >= 0, got -1" in message


def test_unknown_plugin_names(reg):
    assert "unknown method 'lbaa'. Did you mean 'lba'?" in error_of(BASE.replace('"lba"', '"lbaa"'), reg)
    assert "unknown data set 'digit'. Did you mean 'digits'?" in error_of(BASE.replace('"digits"', '"digit"'), reg)
    assert "unknown backbone 'convnet'" in error_of(BASE.replace('"lba_convnet"', '"convnet"'), reg)
    assert 'every run needs a method name (base.method = "..."), got None' in error_of(
        BASE.replace('method = "lba"\n', ""), reg)


def test_malformed_toml_names_the_path(tmp_path):
    path = write_grid(tmp_path, BASE + "steps = = 3\n", name="broken.toml")
    with pytest.raises(UserError) as info:
        load_grid(path)
    assert f"grid file {path} is not valid TOML" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(UserError, match=rf"cannot read grid file {path}: No such file or directory"):
        load_grid(path)


def test_non_table_sections():
    assert "base must be a table ([base])" in error_of('base = 3\n')
    assert "exclude must be an array of tables ([[exclude]])" in error_of(with_base("[exclude]\nseed = 1\n"))
    assert "table must be an array of tables ([[table]])" in error_of(with_base("[table]\nname = \"t\"\n"))


# --------------------------------------------------------------------------- tables
TABLE = """
[[table]]
name = "t"
rows = "n_labeled"
columns = "n_unlabeled"
"""


def test_table_defaults_and_reference(tmp_path):
    path = write_grid(tmp_path, with_base(TABLE + 'reference = "refs/t3.csv"\nwhere = { method = "lba" }\n'),
                      name="sweep.toml")
    grid = load_grid(path)
    assert grid.name == "sweep"  # no name: the file's stem
    (table,) = grid.tables
    assert (table.name, table.rows, table.columns) == ("t", "n_labeled", "n_unlabeled")
    assert (table.metric, table.statistic, table.spread, table.format) == ("test_error", "median", "std", ".2f")
    assert table.where == {"method": "lba"}
    assert table.reference == tmp_path / "refs" / "t3.csv"


@pytest.mark.parametrize("line, message", [
    ('statistic = "max"', "table 't': statistic must be median, mean or best, got 'max'"),
    ('spread = "sem"', "table 't': spread must be std or none, got 'sem'"),
    ('format = "d"', "table 't': format 'd' is not a Python number format"),
    ('format = "abc"', "table 't': format 'abc' is not a Python number format"),
    ("format = 3", "table 't': format 3 is not a Python number format"),
    ('colour = "red"', "table keys colour unknown; allowed: "),
])
def test_table_errors(line, message):
    assert message in error_of(with_base(TABLE + line + "\n"))


def test_table_metric_must_be_a_result_column_of_the_runs(tmp_path, reg):
    from ssl_bench.runner import prepare

    path = write_grid(tmp_path, with_base(TABLE + 'metric = "nmi"\n'))  # ssl runs have no nmi column
    with pytest.raises(UserError) as info:
        prepare(str(path), reg, data_dir=tmp_path, data="skip")
    assert "table 't': metric 'nmi' is not a result column of its runs; one of " in str(info.value)
    assert "test_error_min" in str(info.value)
    # accuracy is 100 - error; a bare metric name is the test set's
    for good in ("test_error_last_k", "test_accuracy", "test_accuracy_max", "accuracy", "error"):
        prepare(str(write_grid(tmp_path, with_base(TABLE + f'metric = "{good}"\n'))), reg, data_dir=tmp_path,
                data="skip")


def test_table_needs_name_rows_columns():
    assert "every [[table]] needs a string 'columns'" in error_of(with_base(TABLE.replace('columns = "n_unlabeled"\n', "")))
    assert "every [[table]] needs a string 'rows'" in error_of(with_base(TABLE.replace('rows = "n_labeled"', "rows = 3")))


@pytest.mark.parametrize("metric", ["test_error", "test_error_min", "test_error_last_k", "test_error_best_val",
                                    "val_error"])
def test_table_accepts_every_metric(metric):
    (table,) = grid_of(with_base(TABLE + f'metric = "{metric}"\nstatistic = "mean"\nspread = "none"\n'
                                 f'format = ".1f"\n')).tables
    assert (table.metric, table.statistic, table.spread, table.format) == (metric, "mean", "none", ".1f")


def test_builtin_grid_parses_and_expands(reg):
    grid = load_grid(reg.grid("digits_table3").path)
    runs = expand(grid, reg)
    assert grid.name == "digits_table3" and len(runs) == 4 * 3 * 5
    assert [t.name for t in grid.tables] == ["table3"]


# --------------------------------------------------------------------------- parse_value
@pytest.mark.parametrize("text, value", [
    ("5", 5), ("-3", -3), ("0", 0), ("1_000", 1000),
    ("0.5", 0.5), ("1e-3", 1e-3), ("1.0", 1.0), ("-2.5", -2.5),
    ("true", True), ("false", False),
    ('"all"', "all"), ('"a b"', "a b"), ("'lba'", "lba"),
    ("all", "all"), ("lba", "lba"), ("timm:resnet18", "timm:resnet18"), ("32,64", "32,64"), ("True", "True"),
    ("[1, 2]", [1, 2]),
])
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value
    assert type(parsed) is type(value)


def test_parse_value_special_floats_and_dates():
    assert math.isinf(parse_value("inf"))
    # TOML dates are TOML values too: a bare 2024-01-01 is not a string
    assert parse_value("2024-01-01") == datetime.date(2024, 1, 1)


def test_smoke_scales_a_grid_down_keeping_its_shape(reg):
    doc = {
        "base": {"dataset": "digits", "backbone": "lba_convnet", "method": "lba", "steps": 5000, "eval_every": 500},
        "axes": {"n_labeled": [20, 50], "seed": [3, 4, 5]},
        "smoke": {"unlabeled_batch": 7},
    }
    runs = expand(parse_grid(doc, smoke=True), reg)
    assert [r.config["n_labeled"] for r in runs] == [20, 50]  # the shape stays, one seed
    assert {(r.config["seed"], r.config["steps"], r.config["eval_every"], r.config["unlabeled_batch"])
            for r in runs} == {(3, 2, 1, 7)}
    # the user's --set wins over the smoke settings
    runs = expand(parse_grid(doc, smoke=True, overrides={"steps": 3}), reg)
    assert {r.config["steps"] for r in runs} == {3}
