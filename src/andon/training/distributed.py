"""``andon train --nproc N``: one run trained by N processes with torch DDP, launched by torchrun's launcher.

``launch`` checks the request (cores, devices, backend, batch split) in the calling process, then starts N
workers through ``torch.distributed.launcher.api.elastic_launch`` (what ``torchrun --standalone`` runs: a c10d
rendezvous on a free local port, no restarts). Each worker runs ``fit`` on its rank (``Rank``):

- the global batch stays ``train.batch_size``: every process takes ``batch_size / N`` of each step's batch, the
  same images (and augmentation seeds) the single-process run would have put in that step
  (``ShardedEpochSampler``), so with averaged gradients a step is the single-process step and the learning
  rate and schedule mean the same thing (up to float rounding and BatchNorm, see below);
- the model is wrapped in ``DistributedDataParallel`` over the parameters that train (rebuilt when the backbone
  is unfrozen); DDP averages the gradients with an all-reduce (gloo on CPU, NCCL on CUDA);
- rank 0 alone writes the run folder (splits.csv, the image cache, checkpoints saved from the unwrapped model,
  metrics.csv, the report), validates on the whole validation split (so the figures are the single-process
  ones for the same weights) and sends each epoch's row to the others, so every rank takes the same
  early-stopping decision; the final evaluation, the anomaly detector and the calibration run on rank 0 after
  the others are done;
- BatchNorm: frozen BatchNorm (train.batchnorm frozen, the default with pretrained weights) uses stored
  statistics, so nothing depends on how the batch is split. When BatchNorm trains, CUDA runs convert it to
  ``SyncBatchNorm`` (statistics over the whole global batch, as with one process); SyncBatchNorm has no CPU
  kernel, so on CPU each process normalises with its own part of the batch and DDP copies rank 0's running
  statistics to the others at every step (a known, small difference from one process, as with any smaller batch);
- threads: ``train.threads`` (or the usable CPU cores when null) are split evenly between the processes.

An ``AndonError`` raised in a worker reaches the caller as the same error class with the same message (one
line on the command line); anything else is a bug and comes back as a RuntimeError with the traceback of the
rank that failed first (the others' failures are often its consequence: a peer that went away), chained to
torch's ``ChildFailedError``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data.distributed import DistributedSampler

from andon import errors
from andon.errors import AndonError, ConfigError
from andon.training.data import EpochSampler
from andon.training.recipe import Recipe

#: how long a rank waits for the others at a collective (rank 0 fills the image cache and validates alone)
WAIT = dt.timedelta(hours=6)
#: loggers of the launcher that would print a worker's failure a second time, as a traceback
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing.spawn", "torch.distributed.run")


@dataclass(frozen=True)
class Rank:
    """Where this process stands in the run: rank ``rank`` of ``world`` (``SINGLE``: no other process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: CPU threads of this process (None: leave torch's default)
    threads: int | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Rank()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_backend(recipe: Recipe) -> tuple[str, str]:
    """(backend, device type) for an ``nproc > 1`` run, or a ConfigError naming what is missing."""
    cfg = recipe.train
    cuda = torch.cuda.is_available()
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("train.device is cuda but no CUDA device is available; use train.device=cpu or auto")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    if backend == "nccl":
        if device != "cuda":
            why = "no CUDA device is available" if not cuda else "train.device is cpu"
            raise ConfigError(
                f"train.backend nccl needs CUDA devices but {why}; use train.backend=gloo (or auto) to train on CPU"
            )
        if not dist.is_nccl_available():
            raise ConfigError("train.backend nccl: this torch build has no NCCL; use train.backend=gloo")
    elif not dist.is_gloo_available():
        raise ConfigError("train.backend gloo: this torch build has no gloo backend; use one built with it")
    return backend, device


def check_request(recipe: Recipe, *, oversubscribe: bool = False) -> str:
    """The backend of a valid ``nproc > 1`` request; a ConfigError for anything the processes could not run."""
    n = recipe.train.nproc
    if not dist.is_available():
        raise ConfigError(f"--nproc {n}: this torch build has no torch.distributed; train with --nproc 1")
    if recipe.anomaly.only:
        raise ConfigError(f"--nproc {n}: an anomaly-only model has no training epochs to split; drop --nproc")
    backend, device = resolve_backend(recipe)
    if device == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {n} is more than the {torch.cuda.device_count()} CUDA device(s) here (one process per device); "
            f"give --nproc {torch.cuda.device_count()} or fewer"
        )
    cores = usable_cores()
    if device == "cpu" and n > cores and not oversubscribe:
        raise ConfigError(
            f"--nproc {n} is more than the {cores} CPU cores this process may use, so the processes would fight "
            f"for them; give --nproc {cores} or fewer, or add --oversubscribe to run {n} anyway"
        )
    batch = recipe.train.batch_size
    if batch % n:
        raise ConfigError(
            f"train.batch_size {batch} does not split into --nproc {n} equal parts (it is the global batch, "
            f"each process takes batch_size / nproc); give a multiple of {n}, such as {max(n, batch // n * n)}"
        )
    return backend


def process_threads(threads: int | None, world: int) -> int:
    """Torch threads of each of ``world`` processes: ``threads`` (or the usable cores) split evenly, at least 1."""
    return max(1, (threads or usable_cores()) // world)


def launch(recipe: Recipe, *, resume: bool = False, oversubscribe: bool = False) -> Any:
    """Train ``recipe`` (named: ``rundir.named``) with ``train.nproc`` processes; rank 0's ``RunResult``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    backend = check_request(recipe, oversubscribe=oversubscribe)
    n = recipe.train.nproc
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"andon-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    threads = process_threads(recipe.train.threads, n)
    with tempfile.TemporaryDirectory(prefix="andon-ddp-") as folder, _quiet_launcher():
        try:
            results = elastic_launch(config, _worker)(recipe.to_dict(), resume, backend, threads, folder)
        except ChildFailedError as exc:
            raised = _worker_error(Path(folder))
            if raised is not None:
                raise raised from None
            first = _first_crash(Path(folder))
            if first is not None:
                raise RuntimeError(
                    f"rank {first['rank']} of {n} training processes failed first:\n{first['traceback']}"
                ) from exc
            raise
        except SignalException as exc:  # Ctrl-C or SIGTERM: the launcher stopped the workers; last.pt resumes
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
    return results[0]


@record  # a crash (a bug, not an AndonError) comes back with the worker's traceback
def _worker(recipe_dict: dict[str, Any], resume: bool, backend: str, threads: int, error_dir: str) -> Any:
    """One rank: join the process group, run ``fit`` on this rank; an AndonError is left in ``error_dir``."""
    from rich.console import Console

    from andon.training.fit import fit_rank
    from andon.training.recipe import recipe_from_dict

    rank = Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]), threads)
    if backend == "nccl":
        torch.cuda.set_device(rank.local_rank)
    dist.init_process_group(backend, timeout=WAIT)
    try:
        recipe = recipe_from_dict(recipe_dict, source="the launched recipe")
        console = Console(stderr=True) if rank.main else Console(file=open(os.devnull, "w"))  # noqa: SIM115
        return fit_rank(recipe, rank, resume=resume, console=console)
    except AndonError as exc:
        # exit non-zero so that the launcher stops the other ranks at once (they may wait at a collective)
        record = {"module": type(exc).__module__, "type": type(exc).__name__, "message": str(exc)}
        Path(error_dir, f"rank{rank.rank}.json").write_text(json.dumps(record))
        raise SystemExit(1) from None
    except Exception:
        # a bug: the launcher reports the failure it sees first, often a rank that lost its peer; keep when
        # and where the first one happened
        crash = {"time": time.time(), "rank": rank.rank, "traceback": traceback.format_exc()}
        Path(error_dir, f"crash{rank.rank}.json").write_text(json.dumps(crash))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker_error(folder: Path) -> AndonError | None:
    """The AndonError a worker left (rank 0's first), rebuilt as its own class, or None."""
    files = sorted(folder.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        return None
    record = json.loads(files[0].read_text())
    cls = getattr(errors, record["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, AndonError)):
        cls = AndonError
    try:
        return cls(record["message"])
    except TypeError:  # a subclass with another constructor
        return AndonError(record["message"])


def _first_crash(folder: Path) -> dict[str, Any] | None:
    """The earliest crash a worker recorded (the others are often its consequence), or None."""
    crashes = [json.loads(p.read_text()) for p in folder.glob("crash*.json")]
    return min(crashes, key=lambda c: c["time"]) if crashes else None


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The launcher's own logs off: a worker's error is reported once, by the caller."""
    known = [name for name in logging.root.manager.loggerDict if name.startswith(_LAUNCHER_LOGGERS)]
    loggers = [logging.getLogger(name) for name in {*_LAUNCHER_LOGGERS, *known}]  # some set their own level
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class ShardedEpochSampler(DistributedSampler):
    """This rank's part of every global batch of an ``EpochSampler``.

    The global order (positions and augmentation seeds, fixed by run seed and epoch) is cut into batches of
    ``batch_size`` as one process would (the last, incomplete one dropped when there is more than one batch);
    rank r takes the r-th slice of ``batch_size / world`` of each. So the N processes of a step together see
    exactly the images one process would, in any number of processes, and ``--resume`` with another ``--nproc``
    goes on with the same batches. When the whole split is one batch (smaller than batch_size) it is padded to
    a multiple of ``world`` by repeating its first images, as ``DistributedSampler`` does.
    """

    def __init__(self, base: EpochSampler, batch_size: int, *, num_replicas: int, rank: int) -> None:
        if batch_size % num_replicas:
            raise ConfigError(f"batch size {batch_size} does not split into {num_replicas} equal parts")
        super().__init__(base, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.base = base
        self.batch_size = batch_size
        self.part = batch_size // num_replicas

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    @property
    def steps(self) -> int:
        """Global batches per epoch (what one process's loader gives)."""
        return max(1, len(self.base) // self.batch_size)

    def per_step(self) -> int:
        """Items this rank takes per step."""
        if len(self.base) > self.batch_size:
            return self.part
        return -(-len(self.base) // self.num_replicas)

    def __len__(self) -> int:
        return self.steps * self.per_step()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(iter(self.base))
        if len(order) > self.batch_size:
            mine = []
            for step in range(self.steps):
                start = step * self.batch_size + self.rank * self.part
                mine.extend(order[start : start + self.part])
            return iter(mine)
        per = self.per_step()
        padded = (order * (-(-per * self.num_replicas // max(1, len(order)))))[: per * self.num_replicas]
        return iter(padded[self.rank * per : (self.rank + 1) * per])


class TrainingLogits(nn.Module):
    """``model.training_logits`` as a module's forward, what DDP wraps (DDP hooks in through ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.training_logits(images)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the parameters of ``model`` that train now (build it again after freezing or unfreezing)."""
    from torch.nn.parallel import DistributedDataParallel

    # buffers (BatchNorm's running statistics, when it trains on CPU) go from rank 0 to the others at every
    # forward: DDP's default
    return DistributedDataParallel(TrainingLogits(model), device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module, device: torch.device, *, frozen: bool) -> nn.Module:
    """SyncBatchNorm for BatchNorm that trains on CUDA; unchanged when frozen or on CPU (see the module doc)."""
    if frozen or device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast(value: Any, rank: Rank) -> Any:
    """Rank 0's ``value`` on every rank (pickled)."""
    if not rank.distributed:
        return value
    box = [value if rank.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rank: Rank) -> None:
    if rank.distributed:
        dist.barrier()


def all_sum(values: list[torch.Tensor], rank: Rank) -> list[torch.Tensor]:
    """Element-wise sums over the ranks (in place on each rank's tensors)."""
    if rank.distributed:
        for value in values:
            dist.all_reduce(value)
    return values
