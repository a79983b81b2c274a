"""The training engine's execution options and run packing: each option computes what the plain
path computes (parity within a stated tolerance), packed runs what solo runs compute, and the
host does not wait for the device every step."""
from __future__ import annotations

import tomllib

import pytest
import torch
import torch.nn.functional as F

from ssl_bench import Method, UserError, hookimpl
from ssl_bench.engine import EngineOptions, build_model, pack_key, packable, train_pack, train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.registry import load_registry
from ssl_bench.runner import pack_size_for_memory, plan_units
from ssl_bench_plugins.datasets.digits import load_digits

GRID = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "lba"
steps = 12
eval_every = 6
labeled_per_class = 4
unlabeled_batch = 40
n_labeled = 50
n_unlabeled = 500
n_validation = 100
weight_decay = 1e-4
[base.backbones.lba_convnet]
widths = "8,16"
embedding_dim = 32
[axes]
seed = [0, 1, 2]
"""
CPU = torch.device("cpu")


class HookedMethod(Method):
    """Cross-entropy, with a lifecycle hook: such a method keeps per-run state, so never packs."""

    name = "hooked"

    def loss_terms(self, batch, model, ctx):
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}

    def on_step_end(self, model, ctx):
        self.last_step = ctx.step


class NoisyLoss(Method):
    """Draws from the run's generator inside the loss: allowed solo, not under vmap."""

    name = "noisy"

    def loss_terms(self, batch, model, ctx):
        noise = torch.rand((), generator=ctx.generator, device=ctx.device)
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled) * (1 + 0 * noise)}


class NanWhenBiasHigh(Method):
    """Cross-entropy, plus NaN at step 2 for runs whose head bias[0] exceeds ``threshold``:
    a divergence that depends on the run's own (seeded) initialisation."""

    name = "nan_when_bias_high"
    threshold: float = 0.0

    def loss_terms(self, batch, model, ctx):
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if ctx.step == 2:
            bias = model.head.bias[0]
            terms["trap"] = torch.where(bias > self.threshold, torch.full_like(bias, float("nan")), bias * 0)
        return terms


class Plugin:
    @staticmethod
    @hookimpl
    def ssl_bench_methods():
        return [HookedMethod, NoisyLoss, NanWhenBiasHigh]


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra_plugins=[("test-engine", Plugin())])


@pytest.fixture(scope="module")
def digits():
    return load_digits(None)


def configs(registry, text=GRID, method="lba", **changes):
    runs = expand(parse_grid(tomllib.loads(text.replace('method = "lba"', f'method = "{method}"'))), registry)
    return [dict(r.config, **changes) for r in runs]


def losses(outcome):
    return [point["loss"] for point in outcome.curves]


def assert_same_run(a, b, *, rel=1e-4, error_points=0.4):
    """Same run computed two ways: same status, steps, subsets; losses within ``rel``; test and
    validation errors within ``error_points`` percentage points (a couple of images whose
    prediction flips under a different summation order)."""
    assert (a.status, a.steps_done) == (b.status, b.steps_done), (a.error, b.error)
    assert a.subsets.hashes() == b.subsets.hashes()
    assert [p["step"] for p in a.curves] == [p["step"] for p in b.curves]
    assert losses(a) == pytest.approx(losses(b), rel=rel)
    for pa, pb in zip(a.curves, b.curves):
        assert pa["loss_terms"].keys() == pb["loss_terms"].keys()
        for key in ("test_error", "val_error"):
            assert abs(pa[key] - pb[key]) <= error_points, (key, pa[key], pb[key])


# ---------------------------------------------------------------------------------------- packing
@pytest.fixture(scope="module")
def solo_runs(registry, digits):
    return [train_run(c, registry, digits, CPU) for c in configs(registry)]


def test_packed_runs_match_solo_runs(registry, digits, solo_runs):
    packed = train_pack(configs(registry), registry, digits, CPU)
    assert [o.pack_size for o in packed] == [3, 3, 3]
    assert [o.pack_size for o in solo_runs] == [1, 1, 1]
    for solo, pack in zip(solo_runs, packed):
        assert_same_run(solo, pack)
        assert set(solo.curves[0]["loss_terms"]) == {"classification", "walker", "visit", "l2"}
        # the packed network handed back is the run's own, and predicts like the solo one
        diffs = [(p - q).abs().max().item() for p, q in zip(solo.model.parameters(), pack.model.parameters())]
        assert max(diffs) < 5e-3  # Adam steps are ~lr = 1e-3 in size; a few flip with rounding
    # the runs are different runs, not one run three times
    assert len({round(o.curves[-1]["loss"], 6) for o in packed}) == 3


def test_packing_is_deterministic(registry, digits):
    cfgs = configs(registry, steps=4, eval_every=4)
    first, second = (train_pack(cfgs, registry, digits, CPU) for _ in range(2))
    for a, b in zip(first, second):
        assert a.curves == b.curves
        assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_a_run_diverging_in_a_pack_leaves_the_others_untouched(registry, digits):
    cfgs = configs(registry, method="nan_when_bias_high")
    biases = []
    for c in cfgs:  # each run's initial head bias[0]: the network is built right after seeding
        torch.manual_seed(c["seed"])
        biases.append(build_model(c, registry, digits).head.bias[0].item())
    order = sorted(range(3), key=lambda i: biases[i])
    threshold = (biases[order[1]] + biases[order[2]]) / 2  # exactly the highest-bias run diverges
    assert biases[order[2]] - biases[order[1]] > 0.01, "the seeds' biases are too close to separate"
    cfgs = [dict(c, methods={"nan_when_bias_high": {"threshold": threshold}}) for c in cfgs]
    packed = train_pack(cfgs, registry, digits, CPU)
    solo = [train_run(c, registry, digits, CPU) for c in cfgs]
    bad = order[2]
    assert packed[bad].status == solo[bad].status == "diverged"
    assert packed[bad].steps_done == solo[bad].steps_done == 2
    assert packed[bad].error.startswith("loss is nan at step 2 (terms: classification=")
    assert packed[bad].curves == [] and packed[bad].model is None
    for i in order[:2]:
        assert packed[i].status == "ok"
        assert_same_run(packed[i], solo[i])


def test_methods_with_hooks_are_not_packed(registry, digits):
    assert packable(registry.method("lba")) and not packable(HookedMethod)
    cfgs = configs(registry, method="hooked", steps=4, eval_every=4)
    packed = train_pack(cfgs, registry, digits, CPU)
    assert [o.pack_size for o in packed] == [1, 1, 1]
    for a, b in zip(packed, (train_run(c, registry, digits, CPU) for c in cfgs)):
        assert a.curves == b.curves


def test_a_pack_that_cannot_train_packed_falls_back_to_solo_runs(registry, digits):
    notes = []
    cfgs = configs(registry, method="noisy", steps=4, eval_every=4)
    packed = train_pack(cfgs, registry, digits, CPU, log=notes.append)
    assert len(notes) == 1 and "training them one by one" in notes[0] and "random" in notes[0]
    assert [o.status for o in packed] == ["ok"] * 3 and [o.pack_size for o in packed] == [1, 1, 1]
    for a, b in zip(packed, (train_run(c, registry, digits, CPU) for c in cfgs)):
        assert a.curves == b.curves


def test_pack_keys_and_units(registry):
    text = GRID.replace("seed = [0, 1, 2]", 'seed = [0, 1, 2]\nn_unlabeled = [0, 100, 200]\n'
                        '"methods.lba.visit_weight" = [0.5, 1.0]')
    runs = expand(parse_grid(tomllib.loads(text)), registry)
    assert len(runs) == 18
    keys = {pack_key(r.config) for r in runs}
    # visit weight splits packs; unlabeled 0 (no unlabeled batch) differs from 100/200 (same shapes)
    assert len(keys) == 4
    units = plan_units(runs, registry, pack=4)
    assert sorted(len(u.run_ids) for u in units) == [2, 2, 3, 3, 4, 4]  # groups of 3 and 6 (4 + 2)
    assert sorted(i for u in units for i in u.run_ids) == sorted(r.run_id for r in runs)
    for unit in units:
        assert len({pack_key(c) for c in unit.configs}) == 1
    assert all(len(u.run_ids) == 1 for u in plan_units(runs, registry, pack=1))
    hooked = expand(parse_grid(tomllib.loads(GRID.replace('"lba"', '"hooked"'))), registry)
    assert all(len(u.run_ids) == 1 for u in plan_units(hooked, registry, pack=8))


def test_train_pack_rejects_runs_that_differ_in_more_than_subsets(registry, digits):
    a, b = configs(registry)[:2]
    with pytest.raises(ValueError, match="differ in more than seed and data subsets"):
        train_pack([a, dict(b, lr=0.5)], registry, digits, CPU)


def test_pack_size_from_memory():
    gib = 2 ** 30
    assert pack_size_for_memory(gib, 80 * gib) == 48  # 60% of 80 GiB at 1 GiB a run
    assert pack_size_for_memory(gib // 100, 80 * gib) == 64  # capped
    assert pack_size_for_memory(10 * gib, 4 * gib) == 1  # never below one


# ---------------------------------------------------------------------------------------- options
def test_channels_last_matches_the_plain_path(registry, digits, solo_runs):
    config = configs(registry)[0]
    outcome = train_run(config, registry, digits, CPU, options=EngineOptions(channels_last=True))
    assert_same_run(solo_runs[0], outcome)


def test_bf16_autocast_stays_close_to_float32(registry, digits, solo_runs):
    config = configs(registry)[0]
    outcome = train_run(config, registry, digits, CPU, options=EngineOptions(bf16=True))
    # bfloat16 keeps 8 bits of mantissa: losses within 2%, errors within 3 points over 12 steps
    assert_same_run(solo_runs[0], outcome, rel=2e-2, error_points=3.0)
    assert all(p.dtype == torch.float32 for p in outcome.model.parameters())


def test_compiled_objective_matches_the_plain_path(registry, digits, solo_runs):
    pytest.importorskip("torch._inductor")
    config = configs(registry)[0]
    outcome = train_run(config, registry, digits, CPU, options=EngineOptions(compile=True))
    assert outcome.status == "ok", outcome.error
    assert_same_run(solo_runs[0], outcome, rel=1e-3, error_points=0.6)


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA device"):
        EngineOptions(cuda_graphs=True).validate(CPU)
    assert EngineOptions().describe() == "plain"
    assert EngineOptions(bf16=True, channels_last=True).describe() == "bf16,channels_last"


def test_the_host_reads_the_device_only_at_checks(registry, digits, monkeypatch):
    """No per-step sync: with one evaluation (at the end) and no check in between, a 40-step run
    reads device values exactly as often as a 10-step run. (The optimiser reads its step
    counter, which PyTorch keeps on the host: not counted.)"""
    import sys

    reads = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "torch/optim" not in caller:
                reads.append((_name, caller, sys._getframe(1).f_lineno))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    counts = []
    for steps in (10, 40):
        reads.clear()
        config = configs(registry, steps=steps, eval_every=steps, n_validation=0)[0]
        outcome = train_run(config, registry, digits, CPU, options=EngineOptions(check_every=1000))
        assert outcome.status == "ok" and len(outcome.curves) == 1
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 10, reads


@pytest.mark.cuda
@pytest.mark.parametrize("options", [EngineOptions(bf16=True), EngineOptions(channels_last=True),
                                     EngineOptions(compile=True), EngineOptions(cuda_graphs=True)], ids=str)
def test_cuda_options_match_the_plain_cuda_run(registry, digits, options):
    cuda = torch.device("cuda")
    config = configs(registry)[0]
    plain = train_run(config, registry, digits, cuda)
    outcome = train_run(config, registry, digits, cuda, options=options)
    rel, points = (2e-2, 3.0) if options.bf16 else (1e-3, 0.6)
    assert_same_run(plain, outcome, rel=rel, error_points=points)


@pytest.mark.cuda
def test_packed_runs_match_solo_runs_on_cuda(registry, digits):
    cuda = torch.device("cuda")
    packed = train_pack(configs(registry), registry, digits, cuda)
    for config, pack in zip(configs(registry), packed):
        assert_same_run(train_run(config, registry, digits, cuda), pack)
