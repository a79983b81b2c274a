"""``ssl-bench bench``: training throughput of one grid's runs, measured three ways in ONE process.

Benchmark code (it knows the LbA SVHN network's naive torchvision loop), kept out of the core
package; the CLI imports it from here.

(a) **naive**: the loop a user would write: ``torchvision.datasets.SVHN`` with per-sample
    torchvision transforms (the same augmentation: affine + random Gaussian blur) in two
    ``DataLoader``s (labeled, unlabeled), fp32, eager, the loss read every step;
(b) **engine**: ``ssl_bench.engine``, one run (data on the device, batched augmentation,
    no per-step host sync, plus whatever ``--bf16/--channels-last/--compile/--cuda-graphs``);
(c) **packed**: the engine with ``--pack K`` runs trained together (torch.func + vmap).

All three train the same network with the same objective: the grid's first run with unlabeled
data (default ``svhn_table3``: LbA, ``lba_svhn``, 100 labeled + 100 unlabeled, augmentation on,
Adam). Rates are differences: (time of N + n steps - time of n steps) / N, so set-up, the first
steps' warm-up (and compilation) and the final evaluation cancel. Reported: steps/s, run-steps/s
(steps/s x runs), ratios b/a and c/a, peak device memory per run (CUDA), model FLOPs per
run-step (``torch.utils.flop_counter``, forward + backward), the achieved FLOP rate against the
device's measured matmul peak (bf16 on a GPU, fp32 on a CPU), and the projected wall time of the
whole grid at the packed rate.

Without the real SVHN files (``ssl-bench data download svhn``), the images are random, written
in the genuine format 2 ``.mat`` files so both loops read them through their own loaders: the
throughput of these networks does not depend on pixel values.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssl_bench.engine import EngineOptions, Objective, build_method, build_model, train_pack
from ssl_bench.errors import UserError
from ssl_bench.method import TrainContext


@dataclasses.dataclass
class Measurement:
    name: str
    runs: int
    steps_per_s: float
    peak_bytes_per_run: float | None

    @property
    def run_steps_per_s(self) -> float:
        return self.steps_per_s * self.runs


# --------------------------------------------------------------------------- data
def synthetic_svhn(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random images in SVHN's format 2 (X: 32 x 32 x 3 x N uint8, y: N x 1, 10 for digit 0)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(folder / name, {"X": x, "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})
    return folder


# --------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> Callable[[], float | None]:
    if device.type != "cuda":
        return lambda: None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    return lambda: float(torch.cuda.max_memory_allocated(device) - base)


def rate_by_difference(train: Callable[[int], None], short: int, extra: int, device: torch.device) -> float:
    """Steps per second of ``train(steps)`` from two lengths: set-up and warm-up cancel. One
    untimed call first pays the one-time costs (lazy imports, kernel selection, compilation)."""
    train(short)
    times = []
    for steps in (short, short + extra):
        _sync(device)
        start = time.perf_counter()
        train(steps)
        _sync(device)
        times.append(time.perf_counter() - start)
    if times[1] <= times[0]:
        raise UserError(f"{extra} more steps took no measurable time ({times[0]:.3f}s vs {times[1]:.3f}s): "
                        f"timing noise is larger than the work; use more --steps")
    return extra / (times[1] - times[0])


# --------------------------------------------------------------------------- (a) the naive loop
def naive_loop(config: dict, registry, dataset, data_dir: Path, device: torch.device,
               workers: int, synthetic: bool) -> Callable[[int], None]:
    """The loop a user would write with torchvision, fp32 and eager."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms as T

    from ssl_bench_plugins.augment import ops as presets

    augment = T.Compose([
        T.RandomAffine(presets.SVHN_ROTATION_DEG, translate=(presets.SVHN_TRANSLATE_PX / 32,) * 2,
                       scale=presets.SVHN_SCALE, shear=presets.SVHN_SHEAR_DEG),
        T.RandomApply([T.GaussianBlur(5, sigma=presets.SVHN_BLUR_SIGMA)], p=presets.SVHN_BLUR_P),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    ])
    class SVHN(torchvision.datasets.SVHN):
        def _check_integrity(self) -> bool:  # random stand-in files cannot match the official md5s
            return synthetic or super()._check_integrity()

    train = SVHN(str(data_dir / "svhn"), split="train", transform=augment)
    n = len(train)
    rng = np.random.default_rng(0)
    labeled = Subset(train, rng.choice(n, size=min(1000, n), replace=False).tolist())
    batch_l = config["labeled_per_class"] * 10
    loaders = [DataLoader(labeled, batch_size=batch_l, shuffle=True, num_workers=workers, drop_last=True,
                          persistent_workers=workers > 0),
               DataLoader(train, batch_size=config["unlabeled_batch"], shuffle=True, num_workers=workers,
                          drop_last=True, persistent_workers=workers > 0)]
    torch.manual_seed(0)
    model = build_model(config, registry, dataset).to(device)  # the network only: data come from `train`
    objective = Objective(model, build_method(config, registry), _context(config, device), config["weight_decay"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    iterators = [iter(loader) for loader in loaders]

    def next_batch(i):
        try:
            return next(iterators[i])
        except StopIteration:
            iterators[i] = iter(loaders[i])
            return next(iterators[i])

    def run(steps: int) -> None:
        for _ in range(steps):
            (x_l, y_l), (x_u, _) = next_batch(0), next_batch(1)
            x_l, y_l, x_u = x_l.to(device), y_l.to(device), x_u.to(device)
            terms = objective({"x_labeled": x_l, "y_labeled": y_l, "x_unlabeled": x_u})
            loss = sum(terms.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # a user logs the loss
    return run


def _context(config: dict, device: torch.device) -> TrainContext:
    return TrainContext(step=0, steps=config["steps"], num_classes=10, device=device, data=None, generator=None)


# --------------------------------------------------------------------------- (b), (c) the engine
def engine_loop(configs: list[dict], registry, dataset, device: torch.device,
                options: EngineOptions) -> Callable[[int], None]:
    def run(steps: int) -> None:
        outcomes = train_pack([dict(c, steps=steps, eval_every=10 ** 9) for c in configs], registry, dataset,
                              device, options=options)
        bad = [o for o in outcomes if o.status != "ok"]
        if bad:
            raise RuntimeError(f"benchmark run {bad[0].status}: {bad[0].error}")
        if len(configs) > 1 and outcomes[0].pack_size != len(configs):
            raise RuntimeError("the runs did not train packed (see the note above)")
    return run


# --------------------------------------------------------------------------- FLOPs
def flops_per_run_step(config: dict, registry, dataset, device: torch.device) -> int:
    """Model FLOPs of one training step of one run (forward and backward), as counted by
    torch.utils.flop_counter (matrix multiplications and convolutions; 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ssl_bench.data import DeviceData, draw_subsets

    subsets = draw_subsets(dataset.train_y.numpy(), dataset.num_classes, seed=0, n_labeled=config["n_labeled"],
                           n_unlabeled=config["n_unlabeled"], overlap=True, unlabeled_pool=dataset.unlabeled_pool)
    data = DeviceData(dataset, subsets, device, 0, augment=config["augment"])
    model = build_model(config, registry, dataset).to(device)
    objective = Objective(model, build_method(config, registry), _context(config, device), config["weight_decay"])
    x_l, y_l = data.labeled_batch(config["labeled_per_class"])
    x_u = data.unlabeled_batch(config["unlabeled_batch"])
    with FlopCounterMode(display=False) as counter:
        sum(objective({"x_labeled": x_l, "y_labeled": y_l, "x_unlabeled": x_u}).values()).backward()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Measured FLOP/s of a square matmul: the reference for utilisation."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


# --------------------------------------------------------------------------- the benchmark
def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run_benchmark(*, grid: str, device: torch.device, pack: int, steps: int, warmup: int, workers: int,
                  options: EngineOptions, data_dir: Path | None, n_images: int, skip_naive: bool = False,
                  log: Callable[[str], None] = print) -> dict:
    from ssl_bench.data import load_data
    from ssl_bench.registry import registry as installed
    from ssl_bench.runner import prepare

    registry = installed()
    synthetic = data_dir is None
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ssl-bench-bench-")))
            log(f"writing {n_images} random SVHN-format images to {data_dir} (throughput does not depend on pixels)")
            synthetic_svhn(data_dir / "svhn", n_images, 1000)
        prepared = prepare(grid, registry, data_dir=data_dir, data="skip")
        candidates = [r for r in prepared.runs if r.config["n_unlabeled"] not in (0, "all")
                      and r.config["n_labeled"] != "all"]
        if not candidates:
            raise UserError(f"grid {grid!r} has no run with a number of unlabeled samples to benchmark")
        config = min(candidates, key=lambda r: r.config["n_unlabeled"]).config
        dataset = load_data(config, registry, data_dir)["source"]
        configs = [dict(config, seed=config["seed"] + i) for i in range(pack)]
        log(f"benchmarking {config['method']} on {config['backbone']} ({config['dataset']}), labeled batch "
            f"{config['labeled_per_class'] * dataset.num_classes} + unlabeled {config['unlabeled_batch']}, "
            f"augment={config['augment']}, on {device} ({options.describe()})")

        results: list[Measurement] = []
        variants = [] if skip_naive else [("naive", 1, lambda: naive_loop(config, registry, dataset, data_dir, device,
                                                                           workers, synthetic))]
        variants += [("engine", 1, lambda: engine_loop(configs[:1], registry, dataset, device, options))]
        if pack > 1:
            variants += [(f"packed x{pack}", pack, lambda: engine_loop(configs, registry, dataset, device, options))]
        for name, runs, make in variants:
            peak = _peak(device)
            train = make()
            rate = rate_by_difference(train, warmup, steps, device)
            used = peak()
            results.append(Measurement(name, runs, rate, None if used is None else used / runs))
            log(f"  {name}: {rate:.3f} steps/s, {rate * runs:.3f} run-steps/s")

        flops = flops_per_run_step(config, registry, dataset, device)
        peak_dtype, size = (torch.bfloat16, 8192) if device.type == "cuda" else (torch.float32, 2048)
        peak_flops = matmul_peak(device, peak_dtype, size)
        total_run_steps = sum(r.config["steps"] for r in prepared.runs)

    base = results[0].run_steps_per_s
    best = results[-1]
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine_description(device), "device": str(device),
        "grid": prepared.grid.name, "data": "random SVHN-format images" if synthetic else str(data_dir), "engine_options": options.describe(), "pack": pack, "naive_workers": workers,
        "steps_timed": steps, "flops_per_run_step": flops,
        "matmul_peak_flops": peak_flops, "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
        "variants": [{"name": m.name, "runs": m.runs, "steps_per_s": m.steps_per_s,
                      "run_steps_per_s": m.run_steps_per_s, "ratio_to_first": m.run_steps_per_s / base,
                      "peak_bytes_per_run": m.peak_bytes_per_run,
                      "achieved_flops": flops * m.run_steps_per_s,
                      "utilisation": flops * m.run_steps_per_s / peak_flops} for m in results],
        "grid_runs": len(prepared.runs), "grid_run_steps": total_run_steps,
        "projected_grid_hours": total_run_steps / best.run_steps_per_s / 3600,
    }
    return report


def format_report(report: dict) -> str:
    first = report["variants"][0]["name"]
    lines = [f"machine: {report['machine']}", f"date: {report['date']}; grid: {report['grid']}; engine options: "
             f"{report['engine_options']}; naive DataLoader workers: {report['naive_workers']}",
             f"model FLOPs per run-step (fwd+bwd): {report['flops_per_run_step'] / 1e9:.2f} GFLOP; measured "
             f"{report['matmul_peak_dtype']} matmul peak: {report['matmul_peak_flops'] / 1e12:.2f} TFLOP/s", "",
             f"| variant | runs | steps/s | run-steps/s | ratio to {first} | peak memory / run | "
             f"achieved TFLOP/s | of matmul peak |", "|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        mem = "n/a (CPU)" if v["peak_bytes_per_run"] is None else f"{v['peak_bytes_per_run'] / 2 ** 20:.0f} MiB"
        lines.append(f"| {v['name']} | {v['runs']} | {v['steps_per_s']:.3f} | {v['run_steps_per_s']:.3f} | "
                     f"{v['ratio_to_first']:.2f} | {mem} | {v['achieved_flops'] / 1e12:.4f} | "
                     f"{100 * v['utilisation']:.1f}% |")
    lines += ["", f"projected wall time of {report['grid']} ({report['grid_runs']} runs, "
                  f"{report['grid_run_steps']:,} run-steps) at the {report['variants'][-1]['name']} rate: "
                  f"{report['projected_grid_hours']:.1f} hours"]
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
