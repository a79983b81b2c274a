"""The cost of CCLP (Kamnitsas et al. 2018, §6: "CCLP increases less than 10% the time for an
SGD iteration, even for large N = 1000", CIFAR settings, TensorFlow, GPU).

    python benchmarks/perf/cclp_cost.py --device cpu|cuda [--sizes 200 1000] [--repeats 5]

Measures, in one process and side by side, the time of one training step (forward, backward,
Adam step) of the LbA SVHN network (``lba_svhn((3, 32, 32))`` in ``ssl_bench.Classifier(..., 10)``,
743k parameters) on a batch of N = N_L + N_U images (N_L = 100 labeled, 10 per class; the rest
unlabeled), in two variants that differ only in the loss:

- ``without``: Z = embed([X_L; X_U]) (one forward pass of all N images), L = CE(head(Z_L), y_L);
- ``with``: the same forward pass, L = CE(head(Z_L), y_L) + w L_CCLP(Z) (``plugins/methods/cclp.py``,
  S = 3, dot product, float64 graph, as ``CompactClustering.loss_terms`` computes it).

Both variants train the same network with the same Adam (two copies of the network ran a few
percent apart in an A/A test here, as much as the effect to measure at N = 1000). After
``--warmup`` untimed steps of each, ``--repeats`` rounds time one block of ``--steps`` steps of
each variant, alternating which goes first (ABBA...), so that drift of a shared machine hits
both alike; the table gives the median ms/step over rounds and their ratio. On CUDA the block
is bracketed by ``torch.cuda.synchronize()``. On CPU the process CPU time (user + system) of
each block is recorded too: on a shared machine it is far less disturbed by other work than
the wall clock (with one thread, it is the time this process computed). Inputs are random (the cost does not depend on
the pixel values); seeds fixed. ``--cclp-alone`` adds the median time of L_CCLP's forward +
backward on its own (on detached embeddings), to show what the overhead is made of.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ssl_bench import Classifier
from ssl_bench_plugins.methods.cclp import cclp
from ssl_bench_plugins.backbones.lba_convnet import lba_svhn

NUM_CLASSES = 10


@dataclasses.dataclass
class CostResult:
    n: int
    n_labeled: int
    device: str
    ms_without: float  # median ms per step, supervised loss only
    ms_with: float  # median ms per step, supervised + w L_CCLP
    ratio: float  # ms_with / ms_without
    ms_cclp_alone: float | None  # median ms of L_CCLP forward + backward on its own (if measured)
    samples_without: list[float]  # wall-clock ms/step of each timed block
    samples_with: list[float]
    round_ratios: list[float]  # wall-clock with / without of each round (the two blocks adjacent in time)
    cpu_ms_without: float | None  # CPU only: median process CPU time (user + system) per step
    cpu_ms_with: float | None
    cpu_ratio: float | None
    steps: int
    repeats: int
    warmup: int
    threads: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(n: int, device: str = "cpu", *, n_labeled: int = 100, repeats: int = 5, steps: int = 2,
            warmup: int = 1, weight: float = 1.0, cclp_steps: int = 3, cclp_alone: bool = True,
            seed: int = 0) -> CostResult:
    """Median ms per training step without and with L_CCLP at batch N = ``n`` (``n_labeled``
    labeled, class-balanced, the rest unlabeled), interleaved as the module docstring says."""
    if not 0 < n_labeled < n or n_labeled % NUM_CLASSES:
        raise ValueError(f"need 0 < n_labeled < n and n_labeled a multiple of {NUM_CLASSES}; got {n_labeled}, {n}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = Classifier(lba_svhn((3, 32, 32)), NUM_CLASSES).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(dev)
    y_l = torch.arange(NUM_CLASSES).repeat(n_labeled // NUM_CLASSES).to(dev)

    def step(variant: str) -> None:
        opt.zero_grad(set_to_none=True)
        z = model.embed(x)
        loss = F.cross_entropy(model.head(z[:n_labeled]), y_l)
        if variant == "with":
            loss = loss + weight * cclp(z[:n_labeled], y_l, z[n_labeled:], NUM_CLASSES, steps=cclp_steps).loss
        loss.backward()
        opt.step()

    def block(fn) -> tuple[float, float]:
        """(wall-clock ms, process CPU ms) per step over ``steps`` calls of ``fn``."""
        _sync(dev)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        _sync(dev)
        return 1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps

    for _ in range(warmup):
        for variant in ("without", "with"):
            step(variant)
    _sync(dev)
    samples = {"without": [], "with": []}
    cpu_samples = {"without": [], "with": []}
    for r in range(repeats):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for variant in order:
            wall, cpu = block(lambda v=variant: step(v))
            samples[variant].append(wall)
            cpu_samples[variant].append(cpu)

    alone = None
    if cclp_alone:
        with torch.no_grad():
            z0 = model.embed(x).detach()

        def cclp_only() -> None:
            z = z0.clone().requires_grad_()
            cclp(z[:n_labeled], y_l, z[n_labeled:], NUM_CLASSES, steps=cclp_steps).loss.backward()

        cclp_only()
        alone = statistics.median(block(cclp_only)[0] for _ in range(repeats))

    ms_without, ms_with = statistics.median(samples["without"]), statistics.median(samples["with"])
    cpu = dev.type == "cpu"
    cpu_without = statistics.median(cpu_samples["without"]) if cpu else None
    cpu_with = statistics.median(cpu_samples["with"]) if cpu else None
    return CostResult(n, n_labeled, str(dev), ms_without, ms_with, ms_with / ms_without, alone,
                      samples["without"], samples["with"],
                      [b / a for a, b in zip(samples["without"], samples["with"])], cpu_without, cpu_with,
                      cpu_with / cpu_without if cpu else None, steps, repeats, warmup, torch.get_num_threads())


def table(results: list[CostResult]) -> str:
    """Markdown: wall-clock medians and ratio; on CPU also the process-CPU-time medians and ratio."""
    header = ("| N (labeled + unlabeled) | device | threads | ms/step without CCLP | ms/step with CCLP | ratio | "
              "per-round ratios (min-max) | CPU ms/step without / with (ratio) | ms L_CCLP alone (fwd+bwd), "
              "% of step without |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        alone = "-" if r.ms_cclp_alone is None else f"{r.ms_cclp_alone:.1f} ({100 * r.ms_cclp_alone / r.ms_without:.1f}%)"
        cpu = "-" if r.cpu_ratio is None else f"{r.cpu_ms_without:.1f} / {r.cpu_ms_with:.1f} ({r.cpu_ratio:.3f})"
        lines.append(f"| {r.n} ({r.n_labeled} + {r.n - r.n_labeled}) | {r.device} | {r.threads} | "
                     f"{r.ms_without:.1f} | {r.ms_with:.1f} | {r.ratio:.3f} | "
                     f"{min(r.round_ratios):.3f}-{max(r.round_ratios):.3f} | {cpu} | {alone} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="batch sizes N")
    parser.add_argument("--n-labeled", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one block of each variant)")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the results (with every sample) to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, device {args.device} ({name}), threads {torch.get_num_threads()}, "
          f"repeats {args.repeats} x {args.steps} steps, warmup {args.warmup}", flush=True)
    results = []
    for n in args.sizes:
        r = measure(n, args.device, n_labeled=args.n_labeled, repeats=args.repeats, steps=args.steps,
                    warmup=args.warmup)
        print(f"N = {n}: wall ms/step without {r.ms_without:.1f} (blocks {[round(v) for v in r.samples_without]}), "
              f"with {r.ms_with:.1f} (blocks {[round(v) for v in r.samples_with]}), ratio {r.ratio:.3f}"
              + ("" if r.cpu_ratio is None else f"; CPU-time ratio {r.cpu_ratio:.3f}"), flush=True)
        results.append(r)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
