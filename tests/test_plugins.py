"""Plugin discovery: the example third-party distribution, the built-ins' own entry points,
duplicate names, broken plugins, and third-party backbones and data sets used in a grid."""
from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from ssl_bench import UserError, read_curves
from ssl_bench import registry as registry_module
from ssl_bench.registry import load_registry

from conftest import ROOT, cli, write_grid

PLUGIN_DIST = "ssl-bench-pseudolabel"


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch):
    """Train in the CLI subprocesses on one thread: on a small, shared machine torch's default
    (a thread per core, spin-waiting) makes these tiny runs tens of times slower under load."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def pseudolabel_installed():
    """The example plugin in plugins/example, pip-installed (editable) as its own distribution."""
    try:
        importlib.metadata.distribution(PLUGIN_DIST)
    except importlib.metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e",
                        str(ROOT / "plugins/example")], check=True)
        importlib.invalidate_caches()
    dist = importlib.metadata.distribution(PLUGIN_DIST)
    try:
        importlib.import_module("ssl_bench_pseudolabel")
    except ImportError:
        # Installed during this session: the editable finder's .pth file is only read when an
        # interpreter starts, so this process needs the source folder on its path (subprocesses
        # find it through the installation itself).
        sys.path.insert(0, str(ROOT / "plugins/example"))
        importlib.invalidate_caches()
        importlib.import_module("ssl_bench_pseudolabel")
    registry_module.registry.cache_clear()
    return dist


TINY = """
dataset = "digits"
backbone = "lba_convnet"
steps = 10
eval_every = 5
labeled_per_class = 2
unlabeled_batch = 20
n_labeled = 20
n_unlabeled = 100
[base.backbones.lba_convnet]
widths = "4"
embedding_dim = 8
"""


def lines_of(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


# ------------------------------------------------------------------ the example plugin
def test_example_plugin_is_listed_with_its_distribution(pseudolabel_installed):
    methods = cli("list", "methods")
    assert methods.returncode == 0, methods.stderr
    by_name = {fields[0]: fields for fields in lines_of(methods.stdout)}
    assert by_name["pseudo_label"][1] == PLUGIN_DIST
    assert "Pseudo-Label" in by_name["pseudo_label"][2]
    assert by_name["lba"][1] == "ssl-bench"
    assert not [line for line in methods.stdout.splitlines() if line.startswith("BROKEN")], methods.stdout

    grids = cli("list", "grids")
    assert grids.returncode == 0, grids.stderr
    by_name = {fields[0]: fields for fields in lines_of(grids.stdout)}
    assert by_name["pseudolabel_digits"][1] == PLUGIN_DIST
    assert by_name["pseudolabel_digits"][2].startswith("supervised vs Pseudo-Label vs LbA on digits")
    assert by_name["pseudolabel_digits"][3].endswith("pseudolabel_digits.toml")
    assert by_name["digits_table3"][1] == "ssl-bench" and by_name["digits_table3"][2] != "-"


def test_example_plugin_in_the_registry(pseudolabel_installed):
    reg = load_registry()
    assert reg.broken == []
    provider = reg.providers["methods"]["pseudo_label"]
    assert provider.distribution == PLUGIN_DIST
    assert provider.entry_point == "pseudo_label"
    assert provider.module == "ssl_bench_pseudolabel"
    from ssl_bench_pseudolabel import PseudoLabel

    assert reg.method("pseudo_label") is PseudoLabel
    assert reg.providers["grids"]["pseudolabel_digits"].distribution == PLUGIN_DIST
    assert reg.grid("pseudolabel_digits").path.name == "pseudolabel_digits.toml"
    eps = [ep for ep in importlib.metadata.entry_points(group="ssl_bench") if ep.name == "pseudo_label"]
    assert [(ep.dist.name, ep.value) for ep in eps] == [(PLUGIN_DIST, "ssl_bench_pseudolabel")]


def test_pseudo_label_grid_runs_end_to_end(pseudolabel_installed, tmp_path):
    grid = write_grid(tmp_path, "name = \"pl\"\n[base]\nmethod = \"pseudo_label\"\n" + TINY + """
[base.methods.pseudo_label]
alpha_final = 2.0
ramp_end = 6
[axes]
methods.pseudo_label.ramp_start = [2, 100]
[[table]]
name = "t"
rows = "n_labeled"
columns = "method"
""")
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "2 ok, 0 diverged, 0 failed" in proc.stderr
    assert "pseudo_label" in proc.stdout  # the table's column
    rows = pd.read_parquet(out / "pl" / "runs")
    assert list(rows["status"]) == ["ok", "ok"]
    assert (rows["method"] == "pseudo_label").all()
    assert (rows["methods.pseudo_label.alpha_final"] == 2.0).all()
    assert (rows["methods.pseudo_label.ramp_end"] == 6).all()
    assert sorted(rows["methods.pseudo_label.ramp_start"]) == [2, 100]
    assert rows["test_error"].between(0, 100).all()

    curves = read_curves(out, "pl").merge(rows[["run_id", "methods.pseudo_label.ramp_start"]])
    assert len(curves) == 4  # evaluations at steps 5 and 10 of both runs
    ramped = curves[curves["methods.pseudo_label.ramp_start"] == 2]
    never = curves[curves["methods.pseudo_label.ramp_start"] == 100]
    # the method reads ctx.step: the term is weighted from step 3 on, and never if the ramp starts late
    assert (ramped["loss_pseudo_label"] > 0).all()
    assert (never["loss_pseudo_label"] == 0).all()


def test_plugin_grid_dry_runs_to_30_runs(pseudolabel_installed):
    proc = cli("run", "--grid", "pseudolabel_digits", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if "\t" in line]
    assert len(runs) == 30 and len({line.split("\t")[0] for line in runs}) == 30
    assert proc.stdout.splitlines()[-1] == "30 runs in grid pseudolabel_digits"
    assert sum("method=pseudo_label" in line for line in runs) == 10


def test_pseudo_label_alpha_ramp(pseudolabel_installed):
    from ssl_bench_pseudolabel import PseudoLabel

    method = PseudoLabel(alpha_final=2.0, ramp_start=10, ramp_end=20)
    assert [method.alpha(t) for t in (0, 5, 9)] == [0.0, 0.0, 0.0]
    assert method.alpha(10) == 0.0
    assert method.alpha(15) == pytest.approx(1.0)
    assert method.alpha(19) == pytest.approx(1.8)
    assert [method.alpha(t) for t in (20, 21, 10_000)] == [2.0, 2.0, 2.0]
    ramp = [method.alpha(t) for t in range(10, 21)]
    assert ramp == sorted(ramp)
    assert all(b - a == pytest.approx(0.2) for a, b in zip(ramp, ramp[1:]))

    default = PseudoLabel()  # Lee's alpha_f = 3
    assert default.alpha(0) == 0.0 and default.alpha(10 ** 6) == 3.0
    with pytest.raises(UserError, match="alpha_final"):
        PseudoLabel(alpha_final=-1.0)


# --------------------------------------------------------------------------- built-ins
BUILTINS = {"lba": "ssl_bench_plugins.methods.lba", "supervised": "ssl_bench_plugins.methods.supervised",
            "digits": "ssl_bench_plugins.datasets.digits", "lba_convnet": "ssl_bench_plugins.backbones.lba_convnet"}


def test_builtins_are_ssl_bench_entry_points():
    eps = importlib.metadata.entry_points(group="ssl_bench")
    own = {ep.name: ep.value for ep in eps if ep.dist is not None and ep.dist.name == "ssl-bench"}
    for name, module in BUILTINS.items():
        assert own.get(name) == module, f"built-in {name!r} is not an entry point of ssl-bench: {own}"

    reg = load_registry()
    for method in ("lba", "supervised"):
        assert method in reg.names("methods")
        assert reg.providers["methods"][method].distribution == "ssl-bench"
        assert reg.providers["methods"][method].module == BUILTINS[method]
    assert reg.providers["datasets"]["digits"].distribution == "ssl-bench"
    assert reg.providers["backbones"]["lba_convnet"].distribution == "ssl-bench"


def test_builtins_take_no_private_path(monkeypatch):
    """Without the entry points, nothing is found: the built-ins are not registered any other way."""
    monkeypatch.setattr(registry_module, "_entry_points", lambda: [])
    reg = load_registry()
    assert all(reg.names(kind) == [] for kind in registry_module.KINDS)
    with pytest.raises(UserError, match="unknown method 'lba'"):
        reg.method("lba")


# ------------------------------------------------------------------------ duplicate names
DUPLICATE_LBA = """
    import torch.nn.functional as F
    from ssl_bench import Method, hookimpl


    class OtherLbA(Method):
        \"\"\"Someone else's LbA.\"\"\"

        name = "lba"

        def loss_terms(self, batch, model, ctx):
            return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}


    @hookimpl
    def ssl_bench_methods():
        return [OtherLbA]
    """


def test_duplicate_name_fails_only_what_needs_it_and_names_both_distributions(plugin_path, tmp_path):
    plugin_path("fancy-lba-dist", {"fancy": "plugins_test_fancy_lba"}, {"plugins_test_fancy_lba": DUPLICATE_LBA})
    reg = load_registry()
    assert "lba" not in reg.names("methods") and "supervised" in reg.names("methods")
    with pytest.raises(UserError) as info:
        reg.method("lba")
    message = str(info.value)
    assert message.startswith("method name 'lba' is provided twice")
    assert "ssl-bench (entry point 'lba'" in message
    assert "fancy-lba-dist (entry point 'fancy'" in message

    listed = cli("list")  # list works and shows the conflict, as it shows broken plugins
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("CONFLICT")]
    assert line.startswith("CONFLICT\tmethods\tmethod name 'lba' is provided twice") and "fancy-lba-dist" in line

    grid = tmp_path / "g.toml"  # a run that does not use the name is unaffected
    grid.write_text('[base]\ndataset = "digits"\nbackbone = "lba_convnet"\nmethod = "supervised"\n'
                    '[base.backbones.lba_convnet]\nwidths = "4"\n')
    assert cli("run", "--grid", str(grid), "--dry-run").returncode == 0
    needs = cli("run", "--grid", str(grid), "--dry-run", "--set", "method=lba")
    assert needs.returncode == 2
    assert needs.stderr.startswith("ssl-bench: error: method name 'lba' is provided twice")
    assert "Traceback" not in needs.stderr and len(needs.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- broken plugins
IMPORT_FAILS = """
    raise ImportError("ghostlib 9.9 is required by ghost_method")
    """

HOOK_FAILS = """
    from ssl_bench import hookimpl


    @hookimpl
    def ssl_bench_methods():
        raise ValueError("the hook exploded")
    """


def broken_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("BROKEN")]


def test_broken_plugins_do_not_break_the_cli(plugin_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    plugin_path("ghost-dist", {"ghost": "plugins_test_ghost"}, {"plugins_test_ghost": IMPORT_FAILS})
    plugin_path("exploding-dist", {"exploding": "plugins_test_exploding"}, {"plugins_test_exploding": HOOK_FAILS})

    reg = load_registry()
    assert {b.provider.distribution for b in reg.broken} == {"ghost-dist", "exploding-dist"}
    assert "lba" in reg.names("methods")

    listing = cli("list")
    assert listing.returncode == 0, listing.stderr
    names = [line.split("\t")[0] for line in listing.stdout.splitlines()]
    assert {"lba", "supervised", "digits", "lba_convnet"} <= set(names)
    broken = broken_lines(listing.stdout)
    assert len(broken) == 2, listing.stdout
    ghost = [line for line in broken if "ghost-dist" in line]
    assert ghost and "ImportError: ghostlib 9.9 is required by ghost_method" in ghost[0]
    exploding = [line for line in broken if "exploding-dist" in line]
    assert exploding and "ValueError: the hook exploded" in exploding[0]
    # never cached: installing ghostlib would change nothing the cache's fingerprint sees
    assert not (tmp_path / "cache" / "catalogue.json").exists()

    # a grid that needs what the broken plugin would provide fails before training
    out = tmp_path / "out"
    grid = write_grid(tmp_path, "[base]\nmethod = \"ghost_method\"\n" + TINY, "ghost.toml")
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 2
    assert "unknown method 'ghost_method'" in proc.stderr
    assert "ghostlib 9.9 is required by ghost_method" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "nothing may be written before the grid is valid"

    # a grid that does not need it runs
    grid = write_grid(tmp_path, "name = \"fine\"\n[base]\nmethod = \"supervised\"\n" + TINY, "fine.toml")
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_parquet(out / "fine" / "runs")["status"]) == ["ok"]


LISTED = """
    from ssl_bench import Method, hookimpl


    class Listed(Method):
        \"\"\"{doc}\"\"\"

        name = "plugins_test_listed"

        def loss_terms(self, batch, model, ctx):
            raise NotImplementedError


    @hookimpl
    def ssl_bench_methods():
        return [Listed]
    """

LIST_AND_REPORT_TORCH = ("import sys; from ssl_bench.cli import main; main(['list']); "
                         "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")


def test_list_is_cached_without_torch_and_follows_installs_and_edits(plugin_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))

    def listing() -> tuple[str, bool]:
        proc = subprocess.run([sys.executable, "-c", LIST_AND_REPORT_TORCH], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, "torch imported: True" in proc.stderr

    root = plugin_path("listed-dist", {"listed": "plugins_test_listed"},
                       {"plugins_test_listed": LISTED.replace("{doc}", "First words.")})
    first, imported = listing()
    assert imported, "the first listing discovers (imports) the plugins"
    assert "plugins_test_listed\tlisted-dist\tFirst words.\n" in first
    second, imported = listing()
    assert not imported and second == first

    # an edited plugin file is listed as it now is
    (root / "plugins_test_listed.py").write_text(textwrap.dedent(LISTED.replace("{doc}", "Second, longer words.")))
    third, imported = listing()
    assert imported and "plugins_test_listed\tlisted-dist\tSecond, longer words.\n" in third
    assert listing() == (third, False)

    # a newly installed distribution is listed
    plugin_path("more-dist", {"more": "plugins_test_more"},
                {"plugins_test_more": LISTED.replace("{doc}", "More.").replace("_listed", "_more")})
    fourth, imported = listing()
    assert imported and "plugins_test_more\tmore-dist\tMore.\n" in fourth and "Second, longer words." in fourth

    # a damaged cache is ignored and replaced
    (tmp_path / "cache" / "catalogue.json").write_text("{not json")
    assert listing() == (fourth, True)
    assert listing() == (fourth, False)


NOT_A_METHOD = """
    from ssl_bench import Method, hookimpl


    class Unrelated:
        name = "unrelated"


    class Real(Method):
        name = "plugins_test_real"

        def loss_terms(self, batch, model, ctx):
            raise NotImplementedError


    @hookimpl
    def ssl_bench_methods():
        return [{kind}]
    """


@pytest.mark.parametrize("kind", ["Unrelated", "Real()", "'lba'"])
def test_hook_returning_a_non_method_is_broken(plugin_path, kind):
    module = f"plugins_test_not_a_method_{abs(hash(kind))}"
    plugin_path("not-a-method-dist", {"nam": module}, {module: NOT_A_METHOD.replace("{kind}", kind)})
    reg = load_registry()
    assert [b.provider.distribution for b in reg.broken] == ["not-a-method-dist"]
    assert "not a Method subclass" in reg.broken[0].error
    assert {"lba", "supervised"} <= set(reg.names("methods"))
    assert "unrelated" not in reg.names("methods") and "plugins_test_real" not in reg.names("methods")
    if kind == "Unrelated":
        proc = cli("list", "methods")
        assert proc.returncode == 0, proc.stderr
        broken = broken_lines(proc.stdout)
        assert len(broken) == 1 and "not-a-method-dist" in broken[0] and "not a Method subclass" in broken[0]
        assert "lba" in [line.split("\t")[0] for line in proc.stdout.splitlines()]


# ------------------------------------------------------------ third-party backbone and data
TOY_PLUGIN = """
    import torch
    from torch import nn

    from ssl_bench import Backbone, DatasetSpec, ImageDataset, hookimpl


    class TinyMLP(nn.Module):
        def __init__(self, input_shape, hidden):
            super().__init__()
            channels, height, width = input_shape
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, hidden), nn.ReLU())
            self.embedding_dim = hidden

        def forward(self, x):
            return self.net(x)


    def build_mlp(input_shape, hidden: int = 8) -> nn.Module:
        return TinyMLP(tuple(input_shape), hidden)


    def load_halves(data_dir, n_train: int = 200, size: int = 6) -> ImageDataset:
        \"\"\"Two classes of uint8 noise images: class 1 has a bright left half.\"\"\"
        generator = torch.Generator().manual_seed(0)

        def make(n):
            y = torch.arange(n, dtype=torch.int64) % 2
            x = torch.randint(0, 60, (n, 1, size, size), generator=generator)
            x[y == 1, :, :, : size // 2] += 150
            return x.to(torch.uint8), y

        train_x, train_y = make(n_train)
        test_x, test_y = make(100)
        return ImageDataset("halves", train_x, train_y, test_x, test_y, num_classes=2, mean=(0.3,), std=(0.3,))


    @hookimpl
    def ssl_bench_backbones():
        return [Backbone("tiny_mlp", build_mlp, "a one-layer MLP")]


    @hookimpl
    def ssl_bench_datasets():
        return [DatasetSpec("halves", load_halves, "2-class synthetic images")]
    """


def test_third_party_backbone_and_dataset_in_a_grid(plugin_path, tmp_path):
    plugin_path("toy-extras", {"toy": "plugins_test_toy_extras"}, {"plugins_test_toy_extras": TOY_PLUGIN})
    reg = load_registry()
    assert reg.providers["backbones"]["tiny_mlp"].distribution == "toy-extras"
    assert reg.providers["datasets"]["halves"].distribution == "toy-extras"

    listing = cli("list", "backbones")
    assert ["tiny_mlp", "toy-extras", "a one-layer MLP"] in lines_of(listing.stdout)

    grid = write_grid(tmp_path, """
        name = "toy"
        [base]
        dataset = "halves"
        backbone = "tiny_mlp"
        steps = 30
        eval_every = 10
        lr = 0.01
        labeled_per_class = 5
        unlabeled_batch = 20
        n_labeled = 10
        n_unlabeled = 100
        [base.backbones.tiny_mlp]
        hidden = 6
        [base.datasets.halves]
        n_train = 150
        [axes]
        method = ["supervised", "lba"]
        """)
    out = tmp_path / "out"
    proc = cli("run", "--grid", str(grid), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_parquet(out / "toy" / "runs")
    assert sorted(rows["method"]) == ["lba", "supervised"]
    assert list(rows["status"]) == ["ok", "ok"]
    assert (rows["dataset"] == "halves").all() and (rows["backbone"] == "tiny_mlp").all()
    assert (rows["backbones.tiny_mlp.hidden"] == 6).all()
    assert (rows["datasets.halves.n_train"] == 150).all()
    assert (rows["datasets.halves.size"] == 6).all()
    assert (rows["n_labeled"] == 10).all() and (rows["n_unlabeled"] == 100).all()
    # the data really flowed: the classes are easy, so the runs learn them
    assert (rows["test_error"] < 25).all(), rows[["method", "test_error"]]

    bad = cli("run", "--grid", str(grid), "--out", str(tmp_path / "bad"), "--set", "backbones.tiny_mlp.width=3")
    assert bad.returncode == 2 and "backbones.tiny_mlp.width" in bad.stderr
