"""Multi-process data-parallel training through PyTorch's own engine: `torchrun` + DistributedDataParallel.

`torchrun --nproc_per_node N -m makemore train ...` starts N copies of the same command and tells each one who it
is through environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). This module reads them,
starts the process group (NCCL between GPUs, Gloo on CPU) and offers the few collective steps the trainer needs.
Without torchrun (or with a world of one) every function here is a cheap no-op, so single-process code paths and
numerics are untouched.

Batch semantics: `--batch-size` is the *global* batch. Every rank draws the same global batch from the same seeded
sampler and keeps its own contiguous slice of rows, so the sampler state is identical on all ranks and a run can be
resumed with a different number of ranks. `--batch-per-rank` makes `--batch-size` a per-rank batch instead (global
batch = batch_size x ranks). Each rank weights its mean loss by its share of the global batch's tokens, so the
averaged gradient equals the single-process gradient of the whole batch (sum of NLL / all tokens).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from makemore.errors import MakemoreError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Who this process is. The default is the single process of an ordinary run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when several processes train one model (and collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints, samples and the progress bar."""
        return self.rank == 0


SINGLE = DistInfo()
_control_group: dist.ProcessGroup | None = None  # a Gloo group for small CPU-side messages when NCCL carries tensors


def _env_int(name: str, environ: dict[str, str]) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise MakemoreError(f"environment variable {name}={text!r} is not an integer (set by torchrun?)") from None
    if value < 0:
        raise MakemoreError(f"environment variable {name}={text!r} must be >= 0")
    return value


def detect(environ: dict[str, str] | None = None) -> DistInfo:
    """Read torchrun's environment variables; SINGLE when they are absent (an ordinary run)."""
    environ = dict(os.environ if environ is None else environ)
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return SINGLE
    rank, world_size = _env_int("RANK", environ), _env_int("WORLD_SIZE", environ)
    local_rank = _env_int("LOCAL_RANK", environ) if "LOCAL_RANK" in environ else rank
    if world_size < 1 or rank >= world_size:
        raise MakemoreError(f"torchrun environment: RANK={rank} is not below WORLD_SIZE={world_size}")
    return DistInfo(rank, world_size, local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL between CUDA GPUs, Gloo on CPU; MPS has no collective backend."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise MakemoreError(f"multi-process training is not supported on {device.type}; use --device cpu or cuda")


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun each process on a machine takes its own GPU: cuda:LOCAL_RANK."""
    if info.enabled and device.type == "cuda" and device.index is None:
        if info.local_rank >= torch.cuda.device_count():
            raise MakemoreError(
                f"LOCAL_RANK {info.local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "use --nproc_per_node <= the number of GPUs"
            )
        return torch.device("cuda", info.local_rank)
    return device


TEARDOWN_WAIT_S = 600  # how long a finished rank waits at exit for the others (rank 0 evaluates and samples)


def setup(device: torch.device, environ: dict[str, str] | None = None) -> DistInfo:
    """Start the process group when launched by torchrun with more than one process; return who we are.

    Idempotent, and torn down at exit. With a world of one nothing is started.
    """
    global _control_group
    if dist.is_available() and dist.is_initialized():
        return current()
    info = detect(environ)
    if not info.enabled:
        return info
    if not dist.is_available():
        raise MakemoreError("this PyTorch build has no torch.distributed; cannot train with several processes")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_device(device, info))
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    # NCCL moves only GPU tensors; stop flags, clocks and eval sums are CPU numbers, so they travel over Gloo
    # rather than forcing a GPU round trip.
    _control_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    atexit.register(teardown)
    return current()


def teardown() -> None:
    """Leave the process group (safe to call more than once, or without one).

    Ranks first wait for each other: rank 0 still evaluates and writes samples after training while the others are
    done, and a rank that destroyed its group while a peer's connections were open was seen to abort at exit
    ("terminate called without an active exception", SIGABRT: seen once in this project's CI)."""
    global _control_group
    if dist.is_available() and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=TEARDOWN_WAIT_S))
            else:
                dist.barrier()
        except Exception:  # a peer that died or hangs: leave anyway, torchrun reports the failure
            pass
        dist.destroy_process_group()
    _control_group = None


def current() -> DistInfo:
    """This process's place in the running process group; SINGLE when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    environ = os.environ
    local_rank = int(environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


# ---------------------------------------------------------------------------------------------------- collectives


def _cpu_reduce(values: Sequence[float], op: dist.ReduceOp) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)  # float64: sums of many NLLs stay exact
    dist.all_reduce(tensor, op=op, group=_control_group)
    return tensor.tolist()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of a few CPU numbers (e.g. an evaluator's NLL sum and token count)."""
    return _cpu_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: Sequence[float]) -> list[float]:
    """Element-wise maximum over ranks: every rank then takes the same stop decision and sees the same clock."""
    return _cpu_reduce(values, dist.ReduceOp.MAX)


def run_on_main(action: Callable[[], None]) -> None:
    """Run `action` on rank 0 only (e.g. create the run directory); if it fails, every rank stops.

    Rank 0 re-raises its own error; the other ranks raise a short MakemoreError pointing at it, instead of
    waiting forever in the first collective for a peer that has gone.
    """
    info = current()
    if not info.enabled:
        action()
        return
    failure: BaseException | None = None
    if info.is_main:
        try:
            action()
        except BaseException as error:  # re-raised below, after telling the other ranks
            failure = error
    (failed,) = all_reduce_max([1.0 if failure is not None else 0.0])
    if failure is not None:
        raise failure
    if failed:
        raise MakemoreError(f"rank {info.rank}: stopping because rank 0 failed (its error is reported above)")


@torch.no_grad()
def parameter_divergence(model: torch.nn.Module) -> float:
    """Largest difference of any parameter or buffer between ranks (0.0: all ranks hold identical weights).

    A sanity check run at every evaluation: DDP keeps replicas identical, and a drift would be a bug.
    """
    info = current()
    if not info.enabled:
        return 0.0
    tensors = [t.detach().float().reshape(-1) for t in list(model.parameters()) + list(model.buffers())]
    if not tensors:
        return 0.0
    flat = torch.cat(tensors)
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


def shard_rows(n_rows: int, info: DistInfo) -> slice:
    """This rank's contiguous slice of a global batch of `n_rows` rows (sizes differ by at most one)."""
    start = n_rows * info.rank // info.world_size
    stop = n_rows * (info.rank + 1) // info.world_size
    return slice(start, stop)


__all__ = [
    "SINGLE",
    "DistInfo",
    "all_reduce_max",
    "all_reduce_sum",
    "backend_for",
    "current",
    "detect",
    "local_device",
    "parameter_divergence",
    "run_on_main",
    "setup",
    "shard_rows",
    "teardown",
]
