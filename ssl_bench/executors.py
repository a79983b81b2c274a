"""Where units of work train: in this process, in one worker process per local device, or as
Ray tasks on a cluster. A unit is one run or a pack of runs (``ssl_bench.engine.train_pack``).

Whatever the executor, only the driver (the ``ssl-bench run`` process) writes results: workers
return outcomes (metrics, curves, subsets and, with ``--save-models``, the network) and the
driver writes each run's parquet files atomically as its unit finishes, so workers need no
shared disk and an interrupted grid resumes from the rows already written.

- :class:`InProcess`: the default; units one after another on ``--device``, with step progress.
- :class:`LocalPool`: ``--devices cuda:0,cuda:1`` (or ``cpu,cpu``): one worker process per
  listed device (spawned; each loads the data sets itself from the data directory, once).

CPU results depend on the number of intra-op threads (the order of floating-point sums), so
every CPU worker computes with this process's ``torch.get_num_threads()`` (set
``OMP_NUM_THREADS`` to choose it): a grid gives the same rows whichever executor trains it.
- :class:`RayExecutor`: ``--executor ray [--address HOST:PORT]``: each unit a Ray task asking
  for ``--gpus-per-task`` GPUs (fractions allowed, so small runs share a GPU) or one CPU; data
  sets travel once through Ray's object store.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .engine import EngineOptions, RunOutcome, train_pack
from .errors import UserError


@dataclasses.dataclass
class Unit:
    """Runs trained together (one, or a pack of equal ``pack_key``), all on the same data sets."""

    run_ids: list[str]
    configs: list[dict]
    data_key: str  # which data sets (``ssl_bench.data.data_key``)


@dataclasses.dataclass
class Finished:
    unit: Unit
    outcomes: list[RunOutcome]
    device: str


def train_unit(configs: list[dict], dataset, device: str, options: EngineOptions, keep_models: bool,
               registry=None, on_step=None, log=None) -> list[RunOutcome]:
    """Train one unit and stamp its outcomes; models come back on the CPU, or not at all."""
    from . import results
    from .registry import registry as installed

    started = results.now()
    outcomes = train_pack(configs, registry or installed(), dataset, torch.device(device), on_step, options, log)
    finished = results.now()
    for outcome in outcomes:
        outcome.started, outcome.finished = started, finished
        outcome.model = outcome.model.cpu() if keep_models and outcome.model is not None else None
    return outcomes


class InProcess:
    """Units one after another in this process on one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def run(self, units: Sequence[Unit], datasets: dict, *, options: EngineOptions, keep_models: bool, registry,
            on_step_for: Callable[[Unit], Callable] | None = None, log=None) -> Iterator[Finished]:
        for unit in units:
            on_step = on_step_for(unit) if on_step_for else None
            outcomes = train_unit(unit.configs, datasets[unit.data_key], str(self.device), options, keep_models,
                                  registry, on_step, log)
            yield Finished(unit, outcomes, str(self.device))


# --------------------------------------------------------------------------- local worker processes
_WORKER: dict = {}


def _init_worker(devices, data_dir: str, threads: int) -> None:
    _WORKER["device"] = devices.get()
    _WORKER["data_dir"] = Path(data_dir)
    _WORKER["datasets"] = {}
    torch.set_num_threads(threads)


def _train_in_worker(unit: Unit, options: EngineOptions, keep_models: bool) -> tuple[list[RunOutcome], str]:
    from .data import load_data
    from .registry import registry

    datasets = _WORKER["datasets"]
    if unit.data_key not in datasets:
        datasets.clear()  # one run's data sets in memory at a time
        datasets[unit.data_key] = load_data(unit.configs[0], registry(), _WORKER["data_dir"])
    device = _WORKER["device"]
    return train_unit(unit.configs, datasets[unit.data_key], device, options, keep_models), device


class LocalPool:
    """One spawned worker process per listed device; units go to whichever worker is free."""

    def __init__(self, devices: Sequence[torch.device], data_dir: Path):
        self.devices, self.data_dir = [str(d) for d in devices], data_dir

    def run(self, units: Sequence[Unit], datasets: dict, *, options: EngineOptions, keep_models: bool, registry,
            on_step_for=None, log=None) -> Iterator[Finished]:
        import concurrent.futures as cf
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for device in self.devices:
            queue.put(device)
        threads = torch.get_num_threads()  # as this process: the same floating-point results
        with cf.ProcessPoolExecutor(len(self.devices), mp_context=context, initializer=_init_worker,
                                    initargs=(queue, str(self.data_dir), threads)) as pool:
            futures = {pool.submit(_train_in_worker, unit, options, keep_models): unit for unit in units}
            try:
                for future in cf.as_completed(futures):
                    outcomes, device = future.result()
                    yield Finished(futures[future], outcomes, device)
            finally:
                for future in futures:
                    future.cancel()


# --------------------------------------------------------------------------- Ray
def _train_on_ray(configs, dataset, options, keep_models, gpus, threads):
    device = "cuda" if gpus > 0 else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU
    import ray

    torch.set_num_threads(threads)
    node = ray.get_runtime_context().get_node_id()
    return train_unit(configs, dataset, device, options, keep_models), f"{device}@{node[:8]}"


class RayExecutor:
    """Each unit a Ray task; the driver collects outcomes as tasks finish."""

    def __init__(self, address: str | None, gpus_per_task: float, device: torch.device):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'ssl-bench[ray]' (or pip install ray)") from None
        if device.type == "cpu" and gpus_per_task:
            gpus_per_task = 0.0
        if device.type == "cuda" and (gpus_per_task <= 0 or gpus_per_task > 1 and not float(gpus_per_task).is_integer()):
            raise UserError(f"--gpus-per-task {gpus_per_task}: use a fraction in (0, 1] or a whole number of GPUs")
        self.address, self.gpus = address, gpus_per_task

    def run(self, units: Sequence[Unit], datasets: dict, *, options: EngineOptions, keep_models: bool, registry,
            on_step_for=None, log=None) -> Iterator[Finished]:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        # A CPU task computes with as many threads as this process (and asks Ray for that many
        # CPUs): float results depend on the thread count, and must not depend on the executor.
        threads = 1 if self.gpus else torch.get_num_threads()
        task = ray.remote(_train_on_ray).options(num_gpus=self.gpus, num_cpus=0 if self.gpus else threads)
        refs = {key: ray.put(ds) for key, ds in datasets.items()}
        pending = {task.remote(u.configs, refs[u.data_key], options, keep_models, self.gpus, threads): u
                   for u in units}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(done[0])
                outcomes, device = ray.get(done[0])
                yield Finished(unit, outcomes, device)
        finally:
            for ref in pending:
                ray.cancel(ref)
