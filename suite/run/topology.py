"""Which share of a sweep this process makes, and on which device: read from the launcher.

Launchers name a process's place in environment variables. The suite reads the same ones, in
the same order, as accelerate (``accelerate.utils.get_cpu_distributed_information``): torchrun
and ``accelerate launch`` (RANK, WORLD_SIZE, LOCAL_RANK), MPI (OMPI_COMM_WORLD_*, PMI_*, MV2_*),
plus Slurm: ``srun`` tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) and job arrays
(SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN), which multiply with the
tasks of each array element. ``--shard i/n`` overrides them all, for any other scheduler.

No process group is created: processes coordinate through the run folder (lease files), so a
rank that dies never hangs the others, array elements need not run at the same time, and
several processes may share one GPU. Each process takes GPU ``local_rank % visible GPUs``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from suite.core.errors import UserError

# (rank, world size, local rank, local world size) variables of each launcher, as accelerate reads them
LAUNCHERS = (
    ("torchrun/accelerate", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("MPI (PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
)
SRUN = ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")


@dataclass(frozen=True)
class Topology:
    """This process's shard of the work items, and its place on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single process"

    def describe(self) -> str:
        return f"shard {self.rank}/{self.world_size} ({self.source})"


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r}: rank and world size must be whole numbers") from None


def _checked(rank: int, size: int, source: str) -> tuple[int, int]:
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"{source}: need 0 <= rank < world size, got rank {rank} of {size}")
    return rank, size


def _launcher(environ) -> tuple[str, int, int, int] | None:
    """(source, rank, world size, local rank) from the first launcher whose variables are set."""
    candidates = [*LAUNCHERS]
    if "SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ:  # inside srun, not the batch script
        candidates.append(SRUN)
    for source, rank_key, size_key, local_key, _ in candidates:
        rank, size = environ.get(rank_key), environ.get(size_key)
        if rank is None and size is None:
            continue
        if rank is None or size is None:
            missing = size_key if size is None else rank_key
            raise UserError(
                f"{rank_key} and {size_key} must be set together ({missing} is missing); or pass --shard i/n"
            )
        rank_number, world = _checked(_integer(rank_key, rank), _integer(size_key, size), f"{rank_key}/{size_key}")
        local = _integer(local_key, environ[local_key]) if local_key in environ else 0
        return source, rank_number, world, local
    return None


def _array(environ) -> tuple[int, int] | None:
    """(index, count) of a Slurm job array element, counted from 0."""
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    if "SLURM_ARRAY_TASK_COUNT" not in environ:
        raise UserError("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT; or pass --shard i/n")
    task = _integer("SLURM_ARRAY_TASK_ID", environ["SLURM_ARRAY_TASK_ID"])
    first = _integer("SLURM_ARRAY_TASK_MIN", environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    count = _integer("SLURM_ARRAY_TASK_COUNT", environ["SLURM_ARRAY_TASK_COUNT"])
    return _checked(task - first, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (needs a contiguous array)")


def parse_shard(text: str) -> tuple[int, int]:
    rank, separator, world_size = text.partition("/")
    if not separator:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
    try:
        rank_number, size = int(rank), int(world_size)
    except ValueError:
        raise UserError(f"--shard {text}: rank and world size must be whole numbers") from None
    return _checked(rank_number, size, f"--shard {text}")


def topology(shard: str | None = None, environ=None) -> Topology:
    """This process's topology: ``--shard i/n`` if given, else the launcher's and Slurm array's variables."""
    environ = os.environ if environ is None else environ
    if shard is not None:
        rank, size = parse_shard(shard)
        local = _launcher(environ)
        return Topology(rank, size, local[3] if local else 0, "--shard")
    launched, array = _launcher(environ), _array(environ)
    if launched is None and array is None:
        return Topology()
    source, rank, size, local = launched or ("", 0, 1, 0)
    if array is None:
        return Topology(rank, size, local, source)
    index, count = array
    name = "Slurm array" + (f" x {source}" if source else "")
    return Topology(index * size + rank, count * size, local, name)


def device_for(requested: str, place: Topology) -> str:
    """``auto``/``cuda`` become this process's GPU: ``cuda:<local rank % visible GPUs>``; anything else is kept."""
    if requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    return f"cuda:{place.local_rank % torch.cuda.device_count()}"
