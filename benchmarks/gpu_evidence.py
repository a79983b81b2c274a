"""GPU evidence kit: one prepared command that spends a short, rare GPU window well (issue 16).

On the device machine, from the repository root::

    pip install --no-deps --no-build-isolation -e . && python benchmarks/gpu_evidence.py --out $OUT

It runs, in order of value, each part bounded in time, within one total budget (default 8.5
minutes, ``--budget``):

1. ``bench``: ``ssl-bench bench`` on the LbA SVHN network (the svhn_table3 grid's smallest run
   with unlabeled data, random SVHN-format images): the naive torchvision loop, the engine, packed
   runs with bf16, channels_last (solo), torch.compile and CUDA graphs. Each JSON holds
   run-steps/s, the ratio to the first variant, peak memory per run, model FLOP utilisation
   against the measured bf16 matmul peak, and the projected svhn_table3 GPU-hours.
2. ``cuda_tests``: the CUDA parity tests (``pytest -m cuda``: bf16 / channels_last / compile /
   CUDA graphs against the plain CUDA run, packed against solo, augmentation on the device).
3. ``cclp_cost``: ``benchmarks/perf/cclp_cost.py`` at N = 200 and 1000 (the CCLP paper's
   "< 10% per iteration" claim is about a GPU).
4. ``grid``: the full-length ``fashion_mnist_table3`` grid (60 runs, 10,000 steps each) with
   packing and bf16, from the Fashion-MNIST files under ``--data-dir`` (carry them with the call:
   30 MB). The runner writes each finished run at once, so a grid cut short by the budget keeps
   what it finished (and a later call resumes it); its table is rendered at the end either way.

Everything goes under ``--out``: ``evidence.json`` (machine, date, command, budget, and per part
its commands, status ``ok`` / ``failed`` / ``timed_out`` / ``skipped``, wall time and why),
rewritten after every command so a killed call still leaves it valid; ``logs/PART.log`` (each
command's output); ``bench/*.json``, ``cclp_cost.json``, ``results/`` (the grid's parquet) and
``GRID.md`` (its table). Commit them under ``results/gpu/DATE-MACHINE/``.

``--device cpu --tiny`` runs the same parts in seconds on a CPU (a few steps, a small grid
with ``--smoke``) so the script is known to work before a GPU is lent; CI runs it
(tests/test_gpu_evidence.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: seconds kept back from every part for the table and the summary at the end
RESERVE_S = 15.0


@dataclasses.dataclass
class Part:
    name: str
    #: the most this part may take, as a fraction of the total budget (the grid: the rest)
    share: float
    commands: list[list[str]]
    why_skipped: str = ""


def ssl_bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssl_bench.cli", *args]


def plan(args) -> list[Part]:
    """The parts and their commands, for a CUDA window or the CPU dry mode (``--tiny``)."""
    out, device = Path(args.out), args.device
    # the dry mode measures the small digits network: the SVHN one is 80 GFLOP a step
    bench = ["bench", "--device", device, "--grid", "digits_table3" if args.tiny else "svhn_table3"]
    if args.tiny:
        steps = ["--steps", "2", "--warmup", "1", "--images", "10", "--workers", "0"]
        # (the naive loop reads SVHN files: tests/test_bench.py covers it)
        variants = [("solo", ["--pack", "1", "--no-naive"]), ("pack2", ["--pack", "2", "--no-naive"])]
    else:
        steps = ["--steps", "20", "--warmup", "5"]
        variants = [("solo", ["--pack", "1"]),
                    ("pack32_bf16", ["--pack", "32", "--no-naive", "--bf16"]),
                    ("solo_bf16_channels_last", ["--pack", "1", "--no-naive", "--bf16", "--channels-last"]),
                    ("pack64_bf16_compile", ["--pack", "64", "--no-naive", "--bf16", "--compile"]),
                    ("pack64_bf16_compile_graphs", ["--pack", "64", "--no-naive", "--bf16", "--compile",
                                                    "--cuda-graphs"])]
    parts = [Part("bench", 0.35, [ssl_bench(*bench, *steps, *extra, "--json", str(out / "bench" / f"{name}.json"))
                                  for name, extra in variants])]
    parts.append(Part("cuda_tests", 0.15, [[sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs",
                                            "-p", "no:cacheprovider", str(ROOT / "tests")]]))
    cclp = [sys.executable, str(ROOT / "benchmarks" / "perf" / "cclp_cost.py"), "--device", device,
            "--json", str(out / "cclp_cost.json")]
    cclp += (["--sizes", "120", "--repeats", "1", "--steps", "1", "--warmup", "1"] if args.tiny
             else ["--sizes", "200", "1000", "--repeats", "10", "--steps", "3", "--warmup", "2"])
    parts.append(Part("cclp_cost", 0.10, [cclp]))
    run = ["run", "--grid", args.grid, "--device", device, "--out", str(out / "results"), "--no-progress"]
    run += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    run += ["--smoke", "--set", "seed=0"] if args.tiny else ["--pack", "auto", "--bf16"]
    parts.append(Part("grid", 1.0, [ssl_bench(*run)]))
    return parts


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
    return f"{name}; {os.cpu_count()} CPU cores; torch {torch.__version__}; python {platform.python_version()}"


class Evidence:
    """evidence.json, rewritten (atomically) after every command."""

    def __init__(self, out: Path, header: dict):
        self.path = out / "evidence.json"
        self.doc = {**header, "parts": []}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.path)


def run_command(command: list[str], log: Path, timeout: float) -> tuple[str, float, int | None]:
    """(status, wall seconds, return code); the command's output is appended to ``log``."""
    start = time.monotonic()
    with open(log, "a") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            code = process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # the whole group: a grid's worker processes too
            process.wait()
            sink.write(f"\n[gpu_evidence] stopped after {timeout:.0f} s: the part's time was up\n")
            return "timed_out", time.monotonic() - start, None
    return ("ok" if code == 0 else "failed"), time.monotonic() - start, code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-evidence"),
                        help="output directory (default: $OUT, else ./gpu-evidence)")
    parser.add_argument("--budget", type=float, default=8.5, help="total minutes (default 8.5)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="dry mode: every part in seconds (a few steps, --smoke)")
    parser.add_argument("--grid", help="the grid to train (default fashion_mnist_table3; --tiny: digits_table3)")
    parser.add_argument("--data-dir", help="data root for the grid (default: data/ if it exists, else "
                                           "ssl-bench's own search: $SSL_BENCH_DATA, Debian's Fashion-MNIST, ...)")
    parser.add_argument("--parts", default="bench,cuda_tests,cclp_cost,grid", help="comma-separated parts to run")
    args = parser.parse_args(argv)
    args.grid = args.grid or ("digits_table3" if args.tiny else "fashion_mnist_table3")
    if args.data_dir is None and (ROOT / "data").is_dir():
        args.data_dir = str(ROOT / "data")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_evidence: --device cuda, but torch sees no CUDA device here; for a dry run use "
                  "--device cpu --tiny", file=sys.stderr)
            return 2
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    parts = plan(args)
    unknown = set(wanted) - {p.name for p in parts}
    if unknown:
        print(f"gpu_evidence: unknown part(s) {', '.join(sorted(unknown))}; the parts are "
              f"{', '.join(p.name for p in parts)}", file=sys.stderr)
        return 2

    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "bench").mkdir(exist_ok=True)
    budget = args.budget * 60.0
    start = time.monotonic()
    evidence = Evidence(out, {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(args.device), "device": args.device,
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["gpu_evidence.py", *argv]),
        "budget_s": budget, "tiny": args.tiny, "grid": args.grid, "data_dir": args.data_dir})
    for part in parts:
        if part.name not in wanted:
            continue
        entry = {"name": part.name, "commands": [], "status": "ok", "wall_s": 0.0}
        evidence.doc["parts"].append(entry)
        left = budget - RESERVE_S - (time.monotonic() - start)
        allowed = min(left, part.share * budget)
        if allowed <= 1.0:
            entry.update(status="skipped", why="the budget was spent before this part")
            evidence.save()
            continue
        part_start = time.monotonic()
        for command in part.commands:
            remaining = allowed - (time.monotonic() - part_start)
            record = {"command": shlex.join(command)}
            entry["commands"].append(record)
            if remaining <= 1.0:
                record.update(status="skipped", why="the part's time was spent")
                entry["status"] = "timed_out"
                continue
            status, wall, code = run_command(command, out / "logs" / f"{part.name}.log", remaining)
            record.update(status=status, wall_s=round(wall, 1), returncode=code)
            if status != "ok" and entry["status"] == "ok":
                entry["status"] = status
            entry["wall_s"] = round(time.monotonic() - part_start, 1)
            evidence.save()
        print(f"[gpu_evidence] {part.name}: {entry['status']} in {entry['wall_s']:.0f} s", file=sys.stderr, flush=True)
        evidence.save()

    if "grid" in wanted:  # the table of whatever the grid finished, also after a time-out
        table = ssl_bench("table", "--grid", args.grid, "--out", str(out / "results"), "--show-n")
        if args.tiny:
            table += ["--smoke", "--set", "seed=0"]
        result = subprocess.run(table, cwd=ROOT, capture_output=True, text=True, timeout=120)
        (out / f"{args.grid}.md").write_text(result.stdout + result.stderr)
    evidence.doc["total_s"] = round(time.monotonic() - start, 1)
    evidence.save()
    failed = [p["name"] for p in evidence.doc["parts"] if p["status"] == "failed"]
    print(f"[gpu_evidence] done in {evidence.doc['total_s']:.0f} s; evidence in {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
