"""Every built-in grid end to end with --smoke, on synthetic files in each data set's genuine
on-disk format: the paper's table shape comes out, every cell filled, every run ok."""
from __future__ import annotations

import pytest

from ssl_bench.registry import load_registry
from ssl_bench.results import read_runs
from ssl_bench.runner import prepare, run_grid
from ssl_bench.tables import table_frame
from test_cifar import write_cifar10, write_cifar100
from test_datasets import write_idx_set, write_stl10, write_svhn
from test_adc_data import write_frgc
from test_da_datasets import write_bsds500, write_gtsrb, write_synth_digits, write_synth_signs
from test_metric_learning_data import write_cars_annos, write_cub, write_sop


import numpy as np
import torch

from ssl_bench.data import check_counts

#: CCLP Fig. 4's chain lengths S
CHAINS = ["1", "2", "3", "4", "5", "6", "8", "10", "15"]

#: the targets of the four domain pairs of associative DA's Table 2 (one column each) and their coverage
DA_TARGETS = ["mnist_m", "svhn", "mnist_32_rgb", "gtsrb"]
DA_COVERAGE = [f"{t} coverage %" for t in DA_TARGETS]

#: the Mean Teacher / Snowball rows of the dissertation's (seed 003) Tables 2.6 and 2.7
SNOWBALL_ROWS = ["Mean Teacher ConvNet-13", "Mean Teacher ResNet-26", "Snowball ConvNet-13", "Snowball ResNet-26"]
#: the rows of its Table 2.9 (one discovery of 500 samples: nearest, random, farthest)
SNOWBALL_DISCOVERY_ROWS = ["500 + 500 (Min)", "500 + 500 (Random)", "500 + 500 (Max)"]
#: the rows of its Tables 3.8 (LMCS discovery rules) and 3.10 (LMCS ablation)
LMCS_DISCOVERY_ROWS = ["No Sample Discovery (Baseline)", "Minimum Distance", "Confined Maximum Entropy",
                       "Confined Minimum Entropy", "Unconfined Maximum Entropy", "Unconfined Minimum Entropy"]
LMCS_ABLATION_ROWS = ["Our LMCS Method (Full Algorithm)", "– without Critical Sample Discovery",
                      "– without Learned Model Composition"]
#: the metric columns (columns = "metric") of the metric-learning tables (TAC-CCL ch. 4, SAN ch. 5)
RECALL_1_8 = ["recall@1", "recall@2", "recall@4", "recall@8"]
RECALL_SOP = ["recall@1", "recall@10", "recall@100"]
TAC_CCL_ROWS = ["TAC-CCL (baseline)", "TAC-CCL"]
SAN_ROWS = ["Baseline", "Proposed"]
_RETRIEVAL_ROWS = ["random network", "ms_baseline", "tac_ccl", "san_unsupervised", "ms_supervised", "san"]
#: the offline evidence grids' rows (Fashion-MNIST adds a tac_ccl row with a lower L_CC weight)
RETRIEVAL_ROWS = {"retrieval_digits": _RETRIEVAL_ROWS,
                  "retrieval_fashion_mnist": _RETRIEVAL_ROWS + ["tac_ccl, cc_weight 0.1", "tac_ccl, feature_weight 0",
                                                                 "tac_ccl + eq. 4.6, asift", "tac_ccl + eq. 4.6, features"]}

# table -> (rows, columns) as the paper prints them
SHAPES = {
    ("svhn_table3", "table3"): (["20", "100", "500", "1000", "2000", "all"], ["0", "1000", "20000", "all"]),
    ("svhn_table2", "table2"): (["500", "1000", "2000"], ["lba"]),
    ("mnist_table1", "table1"): (["100", "1000", "all"], ["lba"]),
    ("mnist_visit_weight", "mnist_min"): (["1000"], ["0", "0.25", "0.5", "1"]),
    ("mnist_visit_weight", "mnist_final"): (["1000"], ["0", "0.25", "0.5", "1"]),
    ("svhn_visit_weight", "svhn_min"): (["1000"], ["0", "0.25", "0.5", "1"]),
    ("svhn_visit_weight", "svhn_final"): (["1000"], ["0", "0.25", "0.5", "1"]),
    ("stl10_lba", "stl10"): (["1000"], ["lba"]),
    ("fashion_mnist_table3", "table3"): (["100", "500", "1000", "all"], ["0", "20000", "all"]),
    ("digits_table3", "table3"): (["20", "50", "100", "all"], ["0", "500", "all"]),
    ("cclp_table1", "table1_mnist"): (["100", "all"], ["cclp", "lba", "supervised"]),
    ("cclp_table1", "table1_svhn"): (["1000", "all"], ["cclp", "lba", "supervised"]),
    ("cclp_table1", "table1_cifar10"): (["4000", "all"], ["cclp", "lba", "supervised"]),
    **{("cclp_steps", f"fig4_{data}"): (CHAINS, [limited, "all"])
       for data, limited in (("mnist", "100"), ("svhn", "1000"), ("cifar10", "4000"))},
    **{("cclp_steps", f"fig4_{data}_baseline"): (["0"], [limited, "all"])
       for data, limited in (("mnist", "100"), ("svhn", "1000"), ("cifar10", "4000"))},
    ("cclp_steps_fashion_mnist", "fig4"): (CHAINS, ["100", "all"]),
    ("cclp_steps_fashion_mnist", "fig4_baseline"): (["0"], ["100", "all"]),
    ("cclp_steps_digits", "fig4"): (CHAINS, ["50", "all"]),
    ("cclp_steps_digits", "fig4_baseline"): (["0"], ["50", "all"]),
    ("cclp_steps_digits", "fig4_test"): (CHAINS, ["50", "all"]),
    ("cclp_steps_digits", "fig4_test_baseline"): (["0"], ["50", "all"]),
    ("baselines_digits", "baselines"): (["supervised", "entmin", "pi_model", "temporal_ensembling", "mean_teacher",
                                         "vat", "mixup", "mixmatch", "fixmatch", "pseudo_label", "lba", "cclp"],
                                        ["50"]),
    ("da_fashion_mnist_m", "target_error"): (["supervised", "assoc_da", "mmd_da", "dann"],
                                             ["fashion_mnist_m", "fashion_mnist_m coverage %"]),
    ("da_fashion_mnist_m", "mmd"): (["supervised", "assoc_da", "mmd_da", "dann"], ["fashion_mnist_m"]),
    ("da_fashion_mnist_m", "target_only"): (["supervised"], ["fashion_mnist_m"]),
    ("da_table2", "table2"): (["supervised", "dann", "mmd_da", "assoc_da"], DA_TARGETS + DA_COVERAGE),
    ("da_table2", "table2_tuned"): (["assoc_da"], DA_TARGETS + DA_COVERAGE),
    ("da_table2", "table2_target_only"): (["supervised"], DA_TARGETS),
    ("da_mmd_table3", "table3"): (["supervised", "assoc_da", "mmd_da"], DA_TARGETS),
    ("da_mmd_table3", "table3_errors"): (["supervised", "assoc_da", "mmd_da"], DA_TARGETS),
    ("baselines_fashion_mnist", "baselines"): (
        ["supervised", "entmin", "pi_model", "temporal_ensembling", "mean_teacher", "vat", "mixup", "mixmatch",
         "fixmatch", "pseudo_label", "lba", "cclp"], ["100"]),
    **{(f"baselines_{data}_table3_{i}", f"table3_{i}"): (
        ["pi_model", "pseudo_label", "mixup", "vat", "mean_teacher", "mixmatch", "lmcs"], ["250", "500"])
       for data, i in (("cifar10", 1), ("svhn", 2))},
    ("baselines_convnet13_table3_3", "table3_3"): (["pi_model", "mean_teacher", "mixmatch", "lmcs"],
                                                   ["cifar10", "cifar100"]),
    **{("adc_digits", t): (["k-means on pixels", "adc", "aug only", "assoc_c + norm", "+ assoc_aug"], ["digits"])
       for t in ("head", "best", "kmeans", "nmi")},
    **{("adc_fashion_mnist", t): (["k-means on pixels", "adc"], ["fashion_mnist"])
       for t in ("head", "best", "kmeans", "nmi")},
    **{("adc_table1", t): (["k-means on pixels", "VCNN", "ResNet"], ["mnist", "frgc", "svhn", "cifar10", "stl10"])
       for t in ("table1_mean", "table1_best", "table1_kmeans")},
    ("adc_ablation", "ablation"): (["aug only", "assoc_c + norm", "+ assoc_aug", "all"], ["mnist", "cifar10", "stl10"]),
    ("adc_ablation", "ablation_kmeans"): (["aug only"], ["mnist", "cifar10", "stl10"]),
    # --smoke trains 100 labels in every cell (the smoke data are small)
    **{("fixmatch_table2", data): (["fixmatch"], ["100"]) for data in ("cifar10", "svhn", "cifar100")},
    # Snowball (seed 003 ch. 2): rows are the protocol key label, as the dissertation's tables print them
    ("snowball_table2_1", "table2_1"): (["Supervised", "Pi Model", "Temporal Ensembling", "Mean Teacher ConvNet-13",
                                         "Snowball ConvNet-13"], ["250", "all"]),
    ("snowball_table2_1", "table2_1_resnet26"): (["Mean Teacher ResNet-26", "Snowball ResNet-26"], ["250"]),
    ("snowball_table2_7", "table2_7"): (SNOWBALL_ROWS, ["100", "250"]),
    ("snowball_table2_2", "table2_2"): (["Supervised", "Pi Model", "Temporal Ensembling", "Mean Teacher ConvNet-13",
                                         "Snowball ConvNet-13"], ["1000", "2000", "all"]),
    ("snowball_table2_2", "table2_2_resnet26"): (["Mean Teacher ResNet-26", "Snowball ResNet-26"], ["1000", "2000"]),
    ("snowball_table2_6", "table2_6"): (SNOWBALL_ROWS, ["250", "500", "1000", "2000"]),
    ("snowball_table2_11", "table2_11"): (["Mean Teacher ResNet-26", "MT + Sample Discovery ResNet-26",
                                           "Snowball ResNet-26"], ["500", "1000"]),
    # --smoke trains 100 labels in every cell (the smoke CIFAR-100 has 10 images per class)
    ("snowball_table2_3", "table2_3"): (["Mean Teacher ResNet-26", "Snowball ResNet-26"], ["100"]),
    ("snowball_table2_4", "table2_4"): (["mixmatch", "snowball_mixmatch"], ["cifar10", "cifar100"]),
    ("snowball_table2_9", "table2_9"): (SNOWBALL_DISCOVERY_ROWS, ["predicted", "true"]),
    ("snowball_table2_9", "table2_9_label_error"): (SNOWBALL_DISCOVERY_ROWS, ["predicted"]),
    ("snowball_lmcs_digits", "snowball"): (["mean_teacher", "snowball", "mixmatch", "snowball_mixmatch", "lmcs"],
                                          ["20", "50"]),
    ("snowball_lmcs_digits", "discovery"): (["", "random", "farthest", "MT + discovery"], ["20"]),
    ("snowball_lmcs_digits", "lmcs_ablation"): (["", "min distance", "without discovery", "without LMC"], ["20"]),
    ("snowball_lmcs_digits", "master"): (["lmcs"], ["20", "50"]),
    ("snowball_lmcs_digits", "discovered_label_error"): (["snowball", "snowball_mixmatch", "lmcs"], ["20", "50"]),
    ("snowball_lmcs_digits", "discovered_label_error_ablation"): (["", "random", "farthest", "MT + discovery"],
                                                                  ["snowball"]),
    ("snowball_lmcs_digits", "lmcs_discovered_label_error"): (["", "min distance", "without LMC"], ["lmcs"]),
    # LMCS (seed 003 ch. 3)
    ("lmcs_table3_4", "table3_4"): (["mixmatch", "lmcs"], ["80", "100", "250", "500"]),
    ("lmcs_table3_5", "table3_5"): (["mixmatch", "lmcs"], ["100", "250", "500"]),
    ("lmcs_table3_8", "table3_8"): (LMCS_DISCOVERY_ROWS, ["100"]),
    ("lmcs_table3_10", "table3_10"): (LMCS_ABLATION_ROWS, ["80", "100", "250"]),
    # TAC-CCL (seed 003 ch. 4) and SAN (ch. 5): rows are the protocol key label, columns the Recall@K metrics
    ("tac_ccl_table4_1", "table4_1_cub"): (TAC_CCL_ROWS, RECALL_1_8),
    ("tac_ccl_table4_1", "table4_1_cars"): (TAC_CCL_ROWS, RECALL_1_8),
    ("tac_ccl_table4_2", "table4_2"): (TAC_CCL_ROWS, RECALL_SOP),
    ("tac_ccl_table4_3", "table4_3"): (["Random", "Ours"], RECALL_SOP),
    ("tac_ccl_table4_4", "table4_4_cub"): (["Baseline", "+CCL", "+TAC"], RECALL_1_8),
    ("tac_ccl_table4_4", "table4_4_cars"): (["Baseline", "+CCL", "+TAC"], RECALL_1_8),
    ("tac_ccl_table4_4", "table4_4_sop"): (["Baseline", "+CCL", "+TAC"], RECALL_SOP),
    ("san_table5_1", "table5_1_cub"): (SAN_ROWS, RECALL_1_8),
    ("san_table5_1", "table5_1_cars"): (SAN_ROWS, RECALL_1_8),
    ("san_table5_2", "table5_2_cub"): (SAN_ROWS, RECALL_1_8),
    ("san_table5_2", "table5_2_cars"): (SAN_ROWS, RECALL_1_8),
    ("san_table5_2", "table5_2_sop"): (SAN_ROWS, RECALL_SOP),
    ("san_table5_3", "table5_3"): (["Random", "Proposed"], RECALL_SOP),
    ("san_table5_4", "table5_4_supervised_cub"): (["Baseline", "+ SAN"], RECALL_1_8),
    ("san_table5_4", "table5_4_supervised_sop"): (["Baseline", "+ SAN"], RECALL_SOP + ["recall@1000"]),
    ("san_table5_4", "table5_4_unsupervised_cub"): (["Baseline", "+ SAN"], RECALL_1_8),
    ("san_table5_4", "table5_4_unsupervised_sop"): (["Baseline", "+ SAN"], RECALL_SOP),
    ("san_table5_5", "table5_5"): (["MS", "MS with SAN"], RECALL_1_8),
    # the offline evidence (issue 14): every method on the same network, classes 0-4 -> retrieve 5-9
    **{(grid, "recall"): (RETRIEVAL_ROWS[grid], RECALL_1_8 + ["map_at_r"]) for grid in RETRIEVAL_ROWS},
    **{(grid, "nmi"): (RETRIEVAL_ROWS[grid], ["kmeans_nmi"]) for grid in RETRIEVAL_ROWS},
    **{(grid, "pseudo_labels"): ([r for r in RETRIEVAL_ROWS[grid] if r in ("ms_baseline", "san_unsupervised")
                                  or r.startswith("tac_ccl")], ["pseudo_label_nmi"]) for grid in RETRIEVAL_ROWS},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Just large enough for the grids' counts (20,000 unlabeled; 200 labels per class; CIFAR-10:
    400 labels per class after the smoke runs' 100 validation images)."""
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "mnist", n_train=20_000, n_test=50)
    write_idx_set(root / "fashion_mnist", n_train=20_000, n_test=50)
    write_svhn(root / "svhn", n_train=20_000, n_test=50, n_extra=10)
    write_stl10(root / "stl10" / "stl10_binary", n_train=1_000, n_test=50, n_unlabeled=40)
    write_cifar10(root / "cifar10" / "cifar-10-batches-py", n_train=6_000, n_test=50)
    write_cifar100(root / "cifar100" / "cifar-100-python", n_train=1_000, n_test=50)
    # the domain-adaptation pairs (da_table2, da_mmd_table3): SynthDigits .mat, Synthetic Signs
    # PNGs + labelling, GTSRB ppm folders + GT csv, BSDS500 photos for MNIST-M
    write_synth_digits(root / "synth_digits", n_train=200, n_test=50)
    write_synth_signs(root / "synth_signs", per_class=3)
    write_gtsrb(root / "gtsrb", train_per_class=2, n_test=50)
    write_bsds500(root / "bsds500")
    write_frgc(root / "frgc" / "data4torch.h5", n=240)
    # the metric-learning sets (TAC-CCL / SAN grids) in their released layouts: 6 classes x 3 JPEGs each, the
    # first 3 classes (SOP: Ebay_train.txt's) the training classes: 9 training images for 4 smoke clusters and
    # P x K = 2 x 2 batches, 9 test images to retrieve
    write_cub(root / "cub200")
    write_cars_annos(root / "cars196")
    write_sop(root / "sop")
    return root


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("grid", sorted({g for g, _ in SHAPES}))
def test_grid_runs_end_to_end_with_smoke(grid, data_dir, registry, tmp_path):
    torch.set_num_threads(1)
    assert grid in registry.names("grids")
    prepared = prepare(grid, registry, smoke=True, data_dir=data_dir)
    assert all(run.config["steps"] == 2 for run in prepared.runs)
    counts = run_grid(prepared, registry, out=tmp_path, device=torch.device("cpu"), show_progress=False,
                      log=lambda msg: None)
    assert counts["ok"] == len(prepared.runs) and counts["failed"] == counts["diverged"] == 0
    rows = read_runs(tmp_path, prepared.grid.name)
    assert len(rows) == len(prepared.runs) and set(rows["status"]) == {"ok"}
    tables = {spec.name: spec for spec in prepared.grid.tables}
    expected = {table: shape for (g, table), shape in SHAPES.items() if g == grid}
    assert set(tables) == set(expected)
    for name, (row_labels, col_labels) in expected.items():
        frame, note = table_frame(tables[name], prepared.runs, rows)
        assert list(frame.index) == row_labels and list(frame.columns) == col_labels
        values = frame[[c for c in frame.columns if not c.endswith(" coverage %")]]  # 2-step coverage may be undefined
        assert not (values == "—").any().any(), frame


def test_every_builtin_grid_is_covered(registry):
    builtin = [name for name in registry.names("grids") if registry.providers["grids"][name].distribution == "ssl-bench"]
    assert sorted(builtin) == sorted({g for g, _ in SHAPES})


def test_paper_grids_have_the_papers_run_counts(registry, tmp_path):
    expected = {"svhn_table3": 240, "svhn_table2": 30, "mnist_table1": 30, "mnist_visit_weight": 40,
                "svhn_visit_weight": 40, "stl10_lba": 5, "fashion_mnist_table3": 60, "digits_table3": 60,
                "cclp_table1": 180, "cclp_steps": 600, "cclp_steps_fashion_mnist": 100, "cclp_steps_digits": 100,
                "baselines_digits": 340, "baselines_cifar10_table3_1": 70, "baselines_svhn_table3_2": 70,
                "baselines_convnet13_table3_3": 40, "fixmatch_table2": 45, "baselines_fashion_mnist": 36,
                "da_fashion_mnist_m": 25, "da_table2": 240, "da_mmd_table3": 60,
                "adc_digits": 25, "adc_fashion_mnist": 10, "adc_table1": 150, "adc_ablation": 60,
                "snowball_table2_1": 60, "snowball_table2_7": 40, "snowball_table2_2": 95, "snowball_table2_6": 80,
                "snowball_table2_11": 30, "snowball_table2_3": 20, "snowball_table2_4": 20, "snowball_table2_9": 30,
                "snowball_lmcs_digits": 80, "lmcs_table3_4": 40, "lmcs_table3_5": 30, "lmcs_table3_8": 30,
                "lmcs_table3_10": 45,
                "tac_ccl_table4_1": 20, "tac_ccl_table4_2": 10, "tac_ccl_table4_3": 10, "tac_ccl_table4_4": 45,
                "san_table5_1": 20, "san_table5_2": 30, "san_table5_3": 10, "san_table5_4": 40, "san_table5_5": 10,
                "retrieval_fashion_mnist": 30, "retrieval_digits": 30}
    for grid, n in expected.items():
        assert len(prepare(grid, registry, data_dir=tmp_path, data="skip").runs) == n, grid


# ------------------------------------------------------------------ the Fig. 4 grids on the real data
#: training-set class counts of the real data sets (MNIST and SVHN: their official training files;
#: CIFAR-10 and Fashion-MNIST are balanced), to check the counts without the files
REAL_CLASS_COUNTS = {
    "mnist": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "svhn": [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659],
    "cifar10": [5000] * 10,
    "fashion_mnist": [6000] * 10,
}


@pytest.mark.parametrize("grid", ["cclp_steps", "cclp_steps_fashion_mnist", "cclp_steps_digits"])
def test_fig4_grids_fit_the_real_class_counts(grid, registry, tmp_path):
    """The Fig. 4 grids hold out 10,000 training images (120 of digits) and still need 10 / 100 /
    400 labeled images per class: every run's counts against the real data sets' class counts."""
    from ssl_bench_plugins.datasets.digits import load_digits

    runs = prepare(grid, registry, data_dir=tmp_path, data="skip").runs
    labels_of = {name: np.repeat(np.arange(10), counts) for name, counts in REAL_CLASS_COUNTS.items()}
    labels_of["digits"] = load_digits(tmp_path).train_y.numpy()
    for run in runs:
        cfg = run.config
        labels = labels_of[cfg["dataset"]]
        check_counts(labels, 10, n_labeled=cfg["n_labeled"], n_unlabeled=cfg["n_unlabeled"],
                     overlap=cfg["unlabeled_overlap"], n_validation=cfg["n_validation"], dataset=cfg["dataset"],
                     seed=cfg["seed"])
