"""Core v2, each mechanism end to end on tiny real data (the UCI digits): tasks (domain
adaptation, clustering, retrieval), metrics, views, method-owned modules, changeable labels,
samplers, the EMA evaluation model, the optimiser sub-table, pretrained weights, and run ids
that do not change when keys are added."""
from __future__ import annotations

import math
import types

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from ssl_bench import Method, UserError, create_model, hookimpl, hyperparameter
from ssl_bench.data import DeviceData, draw_subsets
from ssl_bench.engine import build_model, make_optimizer, make_schedule, train_pack, train_run
from ssl_bench.grid import expand, identity, load_grid, run_id_of
from ssl_bench.registry import load_registry
from ssl_bench.runner import prepare, run_grid
from ssl_bench.tables import render
from ssl_bench_plugins.datasets.digits import load_digits, load_digits_inverted

from conftest import cli, write_grid

CPU = torch.device("cpu")
NET = """
[base.backbones.lba_convnet]
widths = [8]
embedding_dim = 16
"""


# --------------------------------------------------------------------------- methods used by the tests
class Seen:
    """What the test methods saw during training (class-level, reset per test)."""

    batches: list = []


class CentroidClustering(Method):
    """k trainable centroids (a method-owned module); soft k-means on the embeddings, with a
    term that keeps the clusters' total mass balanced; predicts the nearest centroid."""

    name = "test_centroids"
    label_source = "none"

    def build_modules(self, model, num_outputs):
        return {"centroids": nn.Embedding(num_outputs, model.embedding_dim)}

    def loss_terms(self, batch, model, ctx):
        try:
            train_y = ctx.data.train_y
        except RuntimeError:  # inside a pack ctx.data is not one run's
            train_y = None
        Seen.batches.append((batch.x_labeled, batch.y_labeled, train_y))
        z = F.normalize(model.embed(batch.x_unlabeled), dim=1)
        centroids = F.normalize(model.extras["centroids"].weight, dim=1)
        q = torch.softmax(10.0 * z @ centroids.T, dim=1)
        mass = q.mean(0)
        return {"compactness": -(q * torch.log(q + 1e-8)).sum(1).mean(), "balance": (mass * torch.log(mass)).sum()}

    def predict(self, model, x):
        return F.normalize(model.embed(x), dim=1) @ F.normalize(model.extras["centroids"].weight, dim=1).T


class TwoViews(Method):
    """Cross-entropy plus agreement between two views of the unlabeled batch (a Pi-model)."""

    name = "test_two_views"
    views = {"unlabeled": ("none", "flip")}

    def loss_terms(self, batch, model, ctx):
        Seen.batches.append(batch)
        plain, flipped = batch.views["unlabeled"]
        consistency = (model(plain).softmax(1) - model(flipped).softmax(1)).pow(2).sum(1).mean()
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled), "consistency": consistency}


class Discoverer(Method):
    """At step ``at`` gives the ``count`` first unlabeled images of the batch their predicted
    classes (hard pseudo-labels); the labeled sampler then draws them too."""

    name = "test_discoverer"
    at: int = hyperparameter(5, ge=0)
    count: int = hyperparameter(20, ge=1)

    def loss_terms(self, batch, model, ctx):
        Seen.batches.append(batch.idx_labeled.clone())
        if ctx.step == self.at:
            with torch.no_grad():
                idx = batch.idx_unlabeled[: self.count]
                guess = model(batch.x_unlabeled[: self.count]).argmax(1)
            ctx.labels.assign(idx, guess)
            Seen.assigned = (idx.clone(), guess.clone())
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}

    def on_step_end(self, model, ctx):  # a hook: the method keeps per-run state, so it trains alone
        pass


class Teacher(Method):
    """Supervised loss; records whether an EMA teacher was handed to it."""

    name = "test_teacher"

    def loss_terms(self, batch, model, ctx):
        Seen.batches.append(ctx.ema_model is not None)
        terms = {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}
        if ctx.ema_model is not None and batch.x_unlabeled is not None:
            target = ctx.ema_model(batch.x_unlabeled).softmax(1).detach()
            terms["consistency"] = (model(batch.x_unlabeled).softmax(1) - target).pow(2).sum(1).mean()
        return terms


class Generations(Method):
    """Restarts the optimiser (and its schedule) after step ``at``; reports its restarts."""

    name = "test_generations"
    at: int = hyperparameter(2, ge=0)

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.restarts = 0

    def loss_terms(self, batch, model, ctx):
        return {"classification": F.cross_entropy(model(batch.x_labeled), batch.y_labeled)}

    def on_step_end(self, model, ctx):
        if ctx.step == self.at:
            ctx.restart_optimizer()
            self.restarts += 1

    def diagnostics(self, model, ctx):
        return {"restarts": self.restarts}


@hookimpl
def ssl_bench_methods():
    return [CentroidClustering, TwoViews, Discoverer, Teacher, Generations]


@pytest.fixture(scope="module")
def reg():
    plugin = types.ModuleType("ssl_bench_test_methods")
    plugin.ssl_bench_methods = ssl_bench_methods
    return load_registry(extra_plugins=[("ssl-bench-tests", plugin)])


@pytest.fixture(autouse=True)
def clear_seen():
    Seen.batches = []
    yield


def runs(reg, tmp_path, text: str):
    return expand(load_grid(write_grid(tmp_path, text + NET)), reg)


def rejected(reg, tmp_path, text: str, data: str = "required", net: str = NET) -> str:
    """The one error ``prepare`` gives for a grid, before anything is trained."""
    with pytest.raises(UserError) as info:
        prepare(str(write_grid(tmp_path, text + net)), reg, data_dir=tmp_path, data=data)
    return str(info.value)


# --------------------------------------------------------------------------- domain adaptation
DA = """
[base]
task = "domain_adaptation"
dataset = "digits"
target = "digits_inverted"
backbone = "lba_convnet"
method = "lba"
n_labeled = 100
n_unlabeled = "all"
steps = 30
eval_every = 15
labeled_per_class = 3
unlabeled_batch = 30
"""


def test_domain_adaptation_digits_to_inverted_digits(reg, tmp_path):
    (run,) = runs(reg, tmp_path, DA)
    data = {"source": load_digits(None), "target": load_digits_inverted(None)}
    outcome = train_run(run.config, reg, data, CPU)
    assert outcome.status == "ok", outcome.error
    m = outcome.metrics
    # evaluated on the target's test set (test_*) and the source's (source_test_*), with the MMD
    for key in ("test_error", "test_error_min", "source_test_error", "test_mmd", "test_mmd_min"):
        assert math.isfinite(m[key]), key
    assert m["test_mmd"] > 0
    # the unlabeled set indexes the TARGET's training images; the source keeps its labeled subset
    assert outcome.subsets.unlabeled.max() < len(data["target"].train_y)
    assert len(outcome.subsets.unlabeled) == len(data["target"].train_y) and len(outcome.subsets.labeled) == 100
    # each domain is normalised with its own statistics
    device_data = DeviceData(data["source"], outcome.subsets, CPU, 0, unlabeled_dataset=data["target"],
                             unlabeled_from_pool=False)
    assert device_data.domain.mean.item() != pytest.approx(device_data.unlabeled_domain.mean.item())
    first = device_data.unlabeled_domain.normalise(data["target"].train_x[:100])
    assert abs(first.mean().item()) < 0.3  # near zero: the target's own mean was removed
    # the target error differs from the source error: the domain shift is real
    assert m["test_error"] != m["source_test_error"]


def test_domain_adaptation_settings_are_checked_before_training(reg, tmp_path):
    assert "task domain_adaptation needs target" in rejected(
        reg, tmp_path, DA.replace('target = "digits_inverted"\n', ""), data="skip")
    assert "target is a setting of task domain_adaptation, but this run's task is 'ssl'" in rejected(
        reg, tmp_path, DA.replace('task = "domain_adaptation"\n', ""), data="skip")
    # no labeled sample for a method that trains on the given labels: an error when the grid is read
    assert "method lba trains on the labeled samples the task gives, but n_labeled = 0 gives none" in rejected(
        reg, tmp_path, DA.replace("n_labeled = 100", "n_labeled = 0"), data="skip")
    assert "n_unlabeled=5000 is more than the 1297 training images of the target" in rejected(
        reg, tmp_path, DA.replace('n_unlabeled = "all"', "n_unlabeled = 5000"))


# --------------------------------------------------------------------------- clustering
CLUSTERING = """
[base]
task = "clustering"
dataset = "digits"
backbone = "lba_convnet"
method = "test_centroids"
n_labeled = 0
n_unlabeled = "all"
steps = 25
eval_every = 5
unlabeled_batch = 100
[[table]]
name = "clusters"
rows = "method"
columns = "n_unlabeled"
metric = "cluster_accuracy"
statistic = "best"
"""


def hungarian_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    counts = np.zeros((pred.max() + 1, labels.max() + 1))
    np.add.at(counts, (pred, labels), 1)
    rows, cols = linear_sum_assignment(-counts)
    return 100.0 * counts[rows, cols].sum() / len(labels)


def test_clustering_run_scored_by_cluster_accuracy_with_method_owned_centroids(reg, tmp_path):
    (run,) = runs(reg, tmp_path, CLUSTERING)
    digits = load_digits(None)
    torch.manual_seed(run.config["seed"])
    initial = build_model(run.config, reg, digits, 10, CentroidClustering())
    outcome = train_run(run.config, reg, digits, CPU)
    assert outcome.status == "ok", outcome.error
    # no label reached training
    assert Seen.batches and all(x is None and y is None and train_y is None for x, y, train_y in Seen.batches)
    # the centroids are the method's own trained parameters, saved with the network
    state = outcome.model.state_dict()
    assert "extras.centroids.weight" in state and state["extras.centroids.weight"].shape == (10, 16)
    assert not torch.equal(state["extras.centroids.weight"], initial.extras["centroids"].weight)
    # the row's cluster accuracy is the Hungarian-matched accuracy of the method's predictions
    model = outcome.model.eval()
    with torch.no_grad():
        x = ((digits.test_x.float() / 255) - digits.mean[0]) / digits.std[0]
        pred = CentroidClustering().predict(model, x).argmax(1).numpy()
    assert outcome.metrics["test_cluster_accuracy"] == pytest.approx(hungarian_accuracy(pred, digits.test_y.numpy()))
    for key in ("train_cluster_accuracy", "test_nmi", "test_ari", "test_cluster_accuracy_max"):
        assert math.isfinite(outcome.metrics[key]), key
    assert 0 <= outcome.metrics["test_nmi"] <= 1
    assert outcome.metrics["test_cluster_accuracy"] > 20  # well above the 10% of one cluster per class at chance


def test_clustering_grid_renders_a_cluster_accuracy_table(reg, tmp_path):
    prepared = prepare(str(write_grid(tmp_path, CLUSTERING.replace("steps = 25", "steps = 4") + NET)), reg,
                       data_dir=tmp_path)
    counts = run_grid(prepared, reg, out=tmp_path / "out", device=CPU, show_progress=False, log=lambda m: None)
    assert counts["ok"] == 1
    rows = pd.read_parquet(tmp_path / "out" / prepared.grid.name / "runs")
    text = render(prepared.grid.tables[0], prepared.runs, rows)
    value = rows["test_cluster_accuracy"].iloc[0]
    assert f"{value:.2f}" in text and "best run" in text


def test_clustering_rejects_labels(reg, tmp_path):
    assert "task clustering trains without labels: set n_labeled = 0" in rejected(
        reg, tmp_path, CLUSTERING.replace("n_labeled = 0", "n_labeled = 100"))


# --------------------------------------------------------------------------- retrieval
RETRIEVAL = """
[base]
task = "retrieval"
dataset = "digits"
backbone = "lba_convnet"
method = "supervised"
n_labeled = 100
steps = 20
eval_every = 10
labeled_per_class = 4
"""


def test_retrieval_run_scored_by_recall_at_1(reg, tmp_path):
    (run,) = runs(reg, tmp_path, RETRIEVAL)
    digits = load_digits(None)
    outcome = train_run(run.config, reg, digits, CPU)
    assert outcome.status == "ok", outcome.error
    # trained on the first half of the classes only, with a head of that width
    labels = digits.train_y.numpy()
    assert set(labels[outcome.subsets.labeled]) == {0, 1, 2, 3, 4}
    assert outcome.model.head.out_features == 5
    # Recall@1 over the held-out classes' test images, each querying all the others
    held_out = np.isin(digits.test_y.numpy(), [5, 6, 7, 8, 9])
    with torch.no_grad():
        x = ((digits.test_x[held_out].float() / 255) - digits.mean[0]) / digits.std[0]
        z = F.normalize(outcome.model.eval().embed(x), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-math.inf)
    y = digits.test_y[held_out]
    expected = 100.0 * (y[sim.argmax(1)] == y).double().mean().item()
    assert outcome.metrics["test_recall@1"] == pytest.approx(expected)
    assert outcome.metrics["test_recall@1"] <= outcome.metrics["test_recall@8"]


def test_retrieval_checks_classes(reg, tmp_path):
    assert "train_classes [0, 1, 12] names classes outside 0..9" in rejected(
        reg, tmp_path, RETRIEVAL + "train_classes = [0, 1, 12]\n")


# --------------------------------------------------------------------------- views, labels, samplers
TWO_VIEWS = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "test_two_views"
n_labeled = 50
n_unlabeled = 200
steps = 3
eval_every = 3
labeled_per_class = 2
unlabeled_batch = 16
"""


def test_a_two_view_method_gets_its_views_of_the_same_images(reg, tmp_path):
    (run,) = runs(reg, tmp_path, TWO_VIEWS)
    outcome = train_run(run.config, reg, load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error
    batch = Seen.batches[0]
    plain, flipped = batch.views["unlabeled"]
    assert plain.shape == flipped.shape == batch.x_unlabeled.shape == (16, 1, 8, 8)
    torch.testing.assert_close(plain, batch.x_unlabeled)  # "none" is the plain view (augment = false)
    mirrored = torch.tensor([torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain)])
    same = torch.tensor([torch.equal(f, p) for f, p in zip(flipped, plain)])
    assert (mirrored | same).all() and mirrored.any() and same.any()  # each sample: flipped or not
    assert batch.idx_unlabeled.shape == (16,) and set(batch.idx_unlabeled.tolist()) <= set(outcome.subsets.unlabeled)
    assert "consistency" in outcome.curves[-1]["loss_terms"]


def test_a_data_set_may_define_its_own_weak_view(reg):
    from ssl_bench.data import Domain
    from ssl_bench.views import view_pipeline
    from ssl_bench_plugins.augment.pipelines import flip_translate, weak_without_flip

    digits = Domain(load_digits(None), CPU)
    assert view_pipeline("weak", reg, digits) is weak_without_flip  # a mirrored digit is another symbol
    assert view_pipeline("flip_translate", reg, digits) is flip_translate
    assert view_pipeline("weak", reg) is flip_translate  # no domain: the registered pipeline
    assert view_pipeline("standard", reg, digits) is None and view_pipeline("none", reg, digits) is None


def test_an_unknown_view_pipeline_fails_before_training(reg, tmp_path, monkeypatch):
    monkeypatch.setattr(TwoViews, "views", {"unlabeled": ("none", "warp")})
    assert "unknown augmentation pipeline 'warp'" in rejected(reg, tmp_path, TWO_VIEWS)


def test_labels_extended_mid_run_are_sampled_and_scored(reg, tmp_path):
    (run,) = runs(reg, tmp_path, TWO_VIEWS.replace("test_two_views", "test_discoverer").replace("steps = 3", "steps = 12")
                  .replace("eval_every = 3", "eval_every = 4").replace("n_labeled = 50", "n_labeled = 10")
                  .replace("labeled_per_class = 2", "labeled_per_class = 3"))
    digits = load_digits(None)
    outcome = train_run(run.config, reg, digits, CPU)
    assert outcome.status == "ok", outcome.error
    idx, guess = Seen.assigned
    new = set(idx.tolist()) - set(outcome.subsets.labeled)
    # up to the assignment (step 5) only the 10 given samples are drawn; afterwards discovered ones too
    before, after = Seen.batches[:6], Seen.batches[6:]
    assert all(set(b.tolist()) <= set(outcome.subsets.labeled) for b in before)
    assert any(set(b.tolist()) & new for b in after)
    # the curve records how many labels were assigned and how many of them are right
    guessed = dict(zip(idx.tolist(), guess.tolist()))
    given = set(outcome.subsets.labeled.tolist())
    changed = [i for i, g in guessed.items() if i not in given or g != digits.train_y[i]]  # differs from the start
    point = outcome.curves[-1]["metrics"]
    assert point["labels_assigned"] == len(changed) > 0
    assert point["labels_assigned_accuracy"] == pytest.approx(
        100.0 * sum(int(guessed[i] == digits.train_y[i]) for i in changed) / len(changed))
    assert "labels_assigned" not in outcome.curves[0]["metrics"]  # first evaluation after step 4: none yet


def test_label_vector_reset(reg):
    digits = load_digits(None)
    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=20, n_unlabeled=10, overlap=True)
    data = DeviceData(digits, subsets, CPU, 0)
    data.labels.assign(torch.tensor([subsets.unlabeled[0]]), torch.tensor([3]))
    assert len(data.labels.labeled()) == 21
    data.labels.reset()
    assert sorted(data.labels.labeled().tolist()) == sorted(subsets.labeled.tolist())


def test_p_k_and_uniform_samplers():
    digits = load_digits(None)
    subsets = draw_subsets(digits.train_y.numpy(), 10, seed=0, n_labeled=100, n_unlabeled=0, overlap=True)
    data = DeviceData(digits, subsets, CPU, 0)
    seen = set()
    for _ in range(20):
        idx = data.labeled_indices(4, "p_k", classes=3)
        classes = digits.train_y[idx]
        assert len(idx) == 12 and len(set(classes.tolist())) == 3
        assert sorted(torch.bincount(classes, minlength=10).tolist())[-3:] == [4, 4, 4]
        assert len(set(idx.tolist())) == 12  # K distinct images per class (10 labeled per class)
        seen |= set(classes.tolist())
    assert seen == set(range(10))  # every class comes up
    idx = data.labeled_indices(2, "uniform", batch=64)
    assert len(idx) == 64 and set(idx.tolist()) <= set(subsets.labeled.tolist())
    assert len(data.labeled_indices(2, "uniform")) == 20  # 0: labeled_per_class x classes


def test_p_k_sampler_in_a_run(reg, tmp_path):
    (run,) = runs(reg, tmp_path, RETRIEVAL + 'sampler = "p_k"\nclasses_per_batch = 2\n')
    outcome = train_run(run.config, reg, load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error


# --------------------------------------------------------------------------- EMA, optimiser, packing
EMA = """
[base]
dataset = "digits"
backbone = "lba_convnet"
method = "supervised"
n_labeled = 50
steps = 1
eval_every = 1
labeled_per_class = 2
"""


def test_ema_evaluation_model_is_the_average_of_the_weights(reg, tmp_path):
    plain, ema = (runs(reg, tmp_path, EMA + extra)[0] for extra in ("", "ema_decay = 0.5\n"))
    digits = load_digits(None)
    torch.manual_seed(0)
    initial = create_model("lba_convnet", (1, 8, 8), 10, registry=reg, widths=[8], embedding_dim=16).state_dict()
    trained = train_run(plain.config, reg, digits, CPU).model.state_dict()
    averaged = train_run(ema.config, reg, digits, CPU).model.state_dict()
    for name, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * initial[name] + 0.5 * trained[name])


def test_ema_teacher_is_handed_to_the_loss_and_packs(reg, tmp_path):
    text = EMA.replace("supervised", "test_teacher").replace("steps = 1", "steps = 6").replace(
        "eval_every = 1", "eval_every = 3") + "ema_decay = 0.9\nn_unlabeled = 100\nunlabeled_batch = 10\n[axes]\nseed = [0, 1]\n"
    configs = [r.config for r in runs(reg, tmp_path, text)]
    digits = load_digits(None)
    packed = train_pack(configs, reg, digits, CPU)
    assert all(o.pack_size == 2 and o.status == "ok" for o in packed)
    assert Seen.batches and all(Seen.batches)
    solo = [train_run(c, reg, digits, CPU) for c in configs]
    for a, b in zip(packed, solo):
        assert [p["loss"] for p in a.curves] == pytest.approx([p["loss"] for p in b.curves], rel=1e-4)
        assert abs(a.metrics["test_error"] - b.metrics["test_error"]) <= 0.4


def test_a_method_restarts_the_optimiser_and_reports_diagnostics(reg, tmp_path):
    text = EMA.replace("supervised", "test_generations").replace("steps = 1", "steps = 4").replace(
        "eval_every = 1", "eval_every = 2") + "lr_decay_every = 1\nlr_decay_factor = 0.5\n"
    (run,) = runs(reg, tmp_path, text)
    outcome = train_run(run.config, reg, load_digits(None), CPU)
    assert outcome.status == "ok", outcome.error
    # the schedule halves the lr every step; the restart after step 3 (index 2) starts it again
    assert [p["lr"] for p in outcome.curves] == pytest.approx([1e-3 * 0.5 ** 2, 1e-3 * 0.5])
    assert [p["metrics"]["restarts"] for p in outcome.curves] == [0, 1]


@pytest.mark.parametrize("text", [TWO_VIEWS, CLUSTERING.replace("steps = 25", "steps = 6")], ids=["views", "owned_modules"])
def test_views_and_method_owned_modules_pack(reg, tmp_path, text):
    configs = [r.config for r in runs(reg, tmp_path, text + "[axes]\nseed = [0, 1]\n")]
    digits = load_digits(None)
    packed = train_pack(configs, reg, digits, CPU)
    assert all(o.pack_size == 2 and o.status == "ok" for o in packed), [o.error for o in packed]
    for a, b in zip(packed, [train_run(c, reg, digits, CPU) for c in configs]):
        assert [p["loss"] for p in a.curves] == pytest.approx([p["loss"] for p in b.curves], rel=1e-4)
        for key in ("test_error", "test_cluster_accuracy"):
            if key in b.metrics and math.isfinite(b.metrics[key]):
                assert abs(a.metrics[key] - b.metrics[key]) <= 0.4, key


def test_optimiser_sub_table():
    model = nn.Linear(2, 2)
    base = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.01, "steps": 100, "lr_decay_every": 0,
            "lr_decay_factor": 0.5}
    sgd = make_optimizer(model, dict(base, optim={"momentum": 0.5, "nesterov": True,
                                                  "weight_decay_style": "decoupled"}))
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 0.01
    adam = make_optimizer(model, dict(base, optimizer="adam", optim={"betas": [0.5, 0.9]}))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.9)
    assert adam.defaults["weight_decay"] == 0  # l2_loss: the decay is a loss term, not the optimiser's
    assert isinstance(make_optimizer(model, dict(base, optimizer="adam", optim={"weight_decay_style": "decoupled"})),
                      torch.optim.AdamW)

    def lrs(optim, steps=100):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        schedule = make_schedule(opt, dict(base, optim=optim))
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        return out
    cosine = lrs({"schedule": "cosine", "cosine_fraction": 0.5, "warmup_steps": 0})
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(math.cos(math.pi / 4))
    assert cosine[99] == pytest.approx(math.cos(0.5 * math.pi * 0.99))
    fixmatch = lrs({"schedule": "cosine", "cosine_fraction": 7 / 16, "warmup_steps": 0})
    assert fixmatch[50] == pytest.approx(math.cos(7 * math.pi * 50 / (16 * 100)))
    warm = lrs({"schedule": "constant", "warmup_steps": 4})
    assert warm[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_unknown_optim_key_is_one_clear_error(reg, tmp_path):
    assert "unknown key optim.momentun (did you mean 'momentum'?)" in rejected(
        reg, tmp_path, EMA + "[base.optim]\nmomentun = 0.5\n", data="skip")


# --------------------------------------------------------------------------- run ids, backbones
def test_keys_at_their_default_leave_run_ids_unchanged(reg, tmp_path):
    (plain,) = runs(reg, tmp_path, EMA)
    spelled = runs(reg, tmp_path, EMA + 'task = "ssl"\nsampler = "class_balanced"\nema_decay = 0.0\nmetrics = []\n'
                   '[base.optim]\nmomentum = 0.9\nschedule = "step"\n')[0]
    assert spelled.run_id == plain.run_id
    assert runs(reg, tmp_path, EMA + "ema_decay = 0.5\n")[0].run_id != plain.run_id
    assert runs(reg, tmp_path, EMA + "[base.optim]\nwarmup_steps = 5\n")[0].run_id != plain.run_id
    # a list and its older comma-separated spelling are the same network and the same run
    as_string = expand(load_grid(write_grid(tmp_path, EMA + NET.replace("[8]", '"8"'))), reg)[0]
    assert as_string.run_id == plain.run_id and as_string.config == plain.config
    assert run_id_of(identity(plain.config, reg)) == plain.run_id


def test_pretrained_backbone_weights_from_a_local_file(reg, tmp_path):
    torch.manual_seed(123)
    source = create_model("lba_convnet", (1, 8, 8), 10, registry=reg, widths=[8], embedding_dim=16)
    weights = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), weights)
    text = EMA + f'pretrained = "{weights}"\n' + NET
    prepared = prepare(str(write_grid(tmp_path, text)), reg, data_dir=tmp_path)
    run_grid(prepared, reg, out=tmp_path / "out", device=CPU, show_progress=False, log=lambda m: None)
    row = pd.read_parquet(tmp_path / "out" / prepared.grid.name / "runs").iloc[0]
    import hashlib

    assert row["pretrained_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    loaded = create_model("lba_convnet", (1, 8, 8), 10, registry=reg, widths=[8], embedding_dim=16,
                          pretrained=weights)
    for name, value in source.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], value)
    torch.save({"nonsense": torch.zeros(1)}, weights)
    assert "does not fit the backbone" in rejected(reg, tmp_path, text, net="")
    assert "no such file" in rejected(reg, tmp_path, text.replace(str(weights), str(tmp_path / "missing.pt")), net="")


def test_create_model_and_named_features(reg):
    model = create_model("lba_convnet", (1, 8, 8), 7, registry=reg, widths=[4, 8], embedding_dim=6)
    x = torch.zeros(2, 1, 8, 8)
    assert model.head.out_features == 7 and model(x).shape == (2, 7)
    features = model.features(x)
    assert list(features) == ["stage1", "stage2", "embedding"]
    assert features["stage1"].shape == (2, 4, 4, 4) and features["stage2"].shape == (2, 8, 2, 2)
    torch.testing.assert_close(features["embedding"], model.embed(x))
    timm_like = create_model("timm:resnet18", (3, 32, 32), 3, registry=reg)
    assert list(timm_like.features(torch.zeros(2, 3, 32, 32))) == ["embedding"]
    # torchvision's models through the same factory: classifier removed, grey images repeated to RGB
    tv = create_model("torchvision:resnet18", (1, 8, 8), 10, registry=reg)
    assert tv.embedding_dim == 512 and tv(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="torchvision has no classification model 'resnet1'; close: resnet18"):
        create_model("torchvision:resnet1", (3, 8, 8), 10, registry=reg)
    with pytest.raises(UserError, match="widths must be a list of int"):
        create_model("lba_convnet", (1, 8, 8), 7, registry=reg, widths="a,b")


def test_scores_and_embeddings_take_one_backbone_pass_unless_a_method_changes_either(reg):
    model = create_model("lba_convnet", (1, 8, 8), 10, registry=reg, widths=[8], embedding_dim=16).eval()
    passes = []
    model.backbone.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores, embeddings = reg.method("supervised")().predict_and_embed(model, x)
        assert passes == [5]  # one pass serves both, and gives exactly what predict and embed give
        assert torch.equal(scores, model(x)) and torch.equal(embeddings, model.embed(x))

        class Doubled(Method):  # its own embedding path: predict and embed are called as they are
            name = "doubled"

            def embed(self, model, x):
                return 2 * model.embed(x)

        passes.clear()
        scores, embeddings = Doubled().predict_and_embed(model, x)
        assert passes == [5, 5] and torch.equal(embeddings, 2 * model.embed(x)) and torch.equal(scores, model(x))


def test_list_tasks_and_metrics():
    tasks = cli("list", "tasks")
    assert tasks.returncode == 0
    assert [line.split("\t")[0] for line in tasks.stdout.splitlines()] == [
        "clustering", "domain_adaptation", "retrieval", "ssl"]
    metrics = {line.split("\t")[0] for line in cli("list", "metrics").stdout.splitlines()}
    assert {"error", "accuracy", "cluster_accuracy", "nmi", "ari", "recall@*", "mmd"} <= metrics
