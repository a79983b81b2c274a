"""Augmentation: the hand-written batched ops (plugins/augment) against kornia, in one process.

The project's rule: "measure kornia against the hand-written ops and keep the better;
determinism per run is required". This script answers both halves:

Speed -- on a batch of N x 3 x 32 x 32 floats (default N = 64), per call, median over
``--repeats`` rounds after ``--warmup`` untimed calls of each; in every round each contender is
timed once (``--inner`` back-to-back calls), in alternating order, so that load drifts on a
shared machine hit all of them alike. The ratio is kornia's time / ours (> 1: ours faster).

  (a) weak: ``pipelines.flip_translate`` (flip p = 0.5, then whole-pixel shift up to 4 px by
      reflect pad-and-crop) vs kornia ``RandomHorizontalFlip`` + ``RandomCrop(32, padding=4,
      padding_mode="reflect")`` (the same transform), and vs ``RandomHorizontalFlip`` +
      ``RandomAffine(0, translate=0.125, padding_mode="reflection")`` (fractional shifts, bilinear).
  (b) ``pipelines.randaugment`` (FixMatch's variant: per sample 2 ops of 14, random magnitudes;
      strategies "select" -- the default -- and "all"; and, for a like-for-like time, ours with the
      ops drawn once per batch as kornia does) vs ``kornia.augmentation.auto.RandAugment
      (n=2, m=10)``. Not the same transform: kornia draws the 2 ops once per *batch* (every
      sample gets the same ops), at one fixed magnitude, from its own op list (with Invert and
      SolarizeAdd, without Identity, factors 0.1-1.9).
  (c) ``ops.svhn_augment`` (rotation ±10°, scale 0.85-1.15, shear ±10°, translation ±3.5 px,
      reflect; then blur with p = 0.5, sigma U(0.5, 1.4), 11 taps) vs kornia ``RandomAffine(10,
      translate=3.5/32, scale=(0.85, 1.15), shear=10, padding_mode="reflection", p=1)`` +
      ``RandomGaussianBlur(11, sigma=(0.5, 1.4), p=0.5)``.

Each kornia contender is timed twice: as is ("kornia") and wrapped as it would have to run in
ssl-bench ("kornia, seeded", below). Ours run with a ``torch.Generator`` as the plugins do.

Determinism -- kornia draws its random parameters from torch's *global* RNG (there is no
generator argument), so a run's ``torch.Generator`` does not reach it. The way to make it
reproducible per run: draw a 63-bit seed from the run's generator, and call kornia inside
``torch.random.fork_rng`` after ``torch.manual_seed(seed)`` (the global state is restored on
exit, so nothing else is disturbed). The script checks, per pipeline and device, that: (1) plain
kornia after re-seeding only the run's generator does NOT reproduce (it follows the global RNG);
(2) the seeded wrapper reproduces bit for bit from the same generator seed; (3) it leaves the
global RNG state untouched; (4) ours reproduce bit for bit.

    python benchmarks/perf/augment_kornia.py --device cpu --threads 1
    python benchmarks/perf/augment_kornia.py --device cuda

kornia is not a dependency of ssl-bench; ``pip install kornia`` to run this. Exits with status 2
and a message when it is missing.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

from ssl_bench_plugins.augment import ops, pipelines


def _import_kornia():
    try:
        import kornia
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment
    except ImportError as error:                                   # pragma: no cover - depends on the env
        print(f"augment_kornia.py: kornia is not installed ({error}). It is not an ssl-bench dependency; "
              f"install it to run this benchmark: pip install kornia", file=sys.stderr)
        sys.exit(2)
    return kornia, K, RandAugment


def seeded(module: torch.nn.Module) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A kornia module as ``apply(x, generator)``: one 63-bit seed drawn from ``generator`` seeds
    the global RNG inside ``fork_rng`` (restored afterwards)."""
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2 ** 63 - 1, (1,), generator=generator, device=generator.device))
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return module(x)
    return apply


def randaugment_batchwide(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Ours with kornia's RandAugment semantics, for a like-for-like time: the 2 ops are drawn
    once for the whole batch (the first sample's draw), magnitudes still per sample."""
    for _ in range(pipelines.RANDAUGMENT_N):
        k, u = pipelines.draw_randaugment_round(x, generator)
        x = pipelines.apply_randaugment_ops(x, k[:1].expand_as(k), u)
    return x


def contenders(K, RandAugment, side: int) -> Dict[str, List[Tuple[str, Callable]]]:
    """For each comparison, (label, apply(x, generator)) pairs: ours first."""
    flip_crop = torch.nn.Sequential(K.RandomHorizontalFlip(p=0.5),
                                    K.RandomCrop((side, side), padding=4, padding_mode="reflect"))
    flip_affine = torch.nn.Sequential(K.RandomHorizontalFlip(p=0.5),
                                      K.RandomAffine(0.0, translate=(0.125, 0.125), padding_mode="reflection", p=1.0))
    rand_augment = RandAugment(n=2, m=10)
    svhn = torch.nn.Sequential(
        K.RandomAffine(ops.SVHN_ROTATION_DEG, translate=(ops.SVHN_TRANSLATE_PX / side,) * 2, scale=ops.SVHN_SCALE,
                       shear=ops.SVHN_SHEAR_DEG, padding_mode="reflection", p=1.0),
        K.RandomGaussianBlur((11, 11), sigma=ops.SVHN_BLUR_SIGMA, border_type="reflect", p=ops.SVHN_BLUR_P))

    def plain(module):
        return lambda x, g: module(x)

    return {
        "(a) weak: flip + translate": [
            ("ours flip_translate", pipelines.flip_translate),
            ("kornia HFlip+RandomCrop(pad 4, reflect)", plain(flip_crop)),
            ("kornia HFlip+RandomCrop, seeded", seeded(flip_crop)),
            ("kornia HFlip+RandomAffine(translate)", plain(flip_affine)),
            ("kornia HFlip+RandomAffine, seeded", seeded(flip_affine)),
        ],
        "(b) RandAugment n=2": [
            ("ours randaugment (select)", pipelines.randaugment),
            ("ours randaugment (all)", lambda x, g: pipelines.randaugment(x, g, strategy="all")),
            ("ours, batch-wide ops (kornia's semantics)", randaugment_batchwide),
            ("kornia RandAugment(n=2, m=10)", plain(rand_augment)),
            ("kornia RandAugment, seeded", seeded(rand_augment)),
        ],
        "(c) SVHN: affine + blur": [
            ("ours ops.svhn_augment", ops.svhn_augment),
            ("kornia RandomAffine+RandomGaussianBlur", plain(svhn)),
            ("kornia RandomAffine+Blur, seeded", seeded(svhn)),
        ],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_group(group: List[Tuple[str, Callable]], x: torch.Tensor, repeats: int, warmup: int,
               inner: int) -> Dict[str, float]:
    """Median seconds per call of each contender; contenders alternate within every round, the
    order reversed every other round."""
    device = x.device
    generators = {label: torch.Generator(device=device).manual_seed(0) for label, _ in group}
    for label, f in group:
        for _ in range(warmup):
            f(x, generators[label])
    _sync(device)
    times: Dict[str, List[float]] = {label: [] for label, _ in group}
    for r in range(repeats):
        order = group if r % 2 == 0 else group[::-1]
        for label, f in order:
            g = generators[label]
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                f(x, g)
            _sync(device)
            times[label].append((time.perf_counter() - start) / inner)
    return {label: statistics.median(t) for label, t in times.items()}


def check_determinism(label: str, f: Callable, x: torch.Tensor, kornia_plain: bool) -> Dict[str, object]:
    device = x.device

    def gen(seed):
        return torch.Generator(device=device).manual_seed(seed)

    def global_state():
        cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
        return [torch.get_rng_state(), *cuda]

    before = global_state()
    a = f(x, gen(7))
    b = f(x, gen(7))
    c = f(x, gen(8))
    result = {"same seed -> identical": torch.equal(a, b), "other seed -> different": not torch.equal(a, c)}
    if not kornia_plain:
        result["global RNG untouched"] = all(torch.equal(s, t) for s, t in zip(before, global_state()))
    return result


def machine() -> str:
    try:
        model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
            if line.startswith("Model name")), platform.processor() or "unknown CPU")
    except OSError:
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical CPUs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or 'all' (cpu, then cuda when available)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inner", type=int, default=5, help="back-to-back calls per timing")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args(argv)

    kornia, K, RandAugment = _import_kornia()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    if not devices:
        sys.exit("augment_kornia.py: CUDA requested but not available")

    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {torch.get_num_threads()} threads; {machine()}")
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}")
    print(f"batch {args.batch} x 3 x {args.side} x {args.side} float32; median of {args.repeats} rounds of "
          f"{args.inner} calls after {args.warmup} warm-up calls; ratio = time / time of ours (first row)")
    all_ok = True
    for name in devices:
        device = torch.device(name)
        x = torch.rand(args.batch, 3, args.side, args.side, generator=torch.Generator().manual_seed(0)).to(device)
        torch.manual_seed(0)
        groups = contenders(K, RandAugment, args.side)
        for title, group in groups.items():
            medians = time_group(group, x, args.repeats, args.warmup, args.inner)
            ours = medians[group[0][0]]
            print(f"\n[{name}] {title}")
            print(f"  {'contender':44s} {'ms/call':>9s} {'ratio':>7s}  "
                  f"determinism (same seed / other seed / global kept)")
            for label, f in group:
                det = check_determinism(label, f, x, kornia_plain=label.startswith("kornia") and "seeded" not in label)
                flags = " / ".join(f"{'yes' if v else 'NO'}" for v in det.values())
                print(f"  {label:44s} {medians[label] * 1e3:9.3f} {medians[label] / ours:7.2f}  {flags}")
                if not label.startswith("kornia") or "seeded" in label:
                    all_ok = all_ok and all(det.values())
    print("\nplain kornia ignores the run's generator (its 'same seed' is 'NO' unless the global RNG happens to "
          "repeat); ours and the seeded kornia wrappers must read yes / yes / yes.")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
