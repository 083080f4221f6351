"""Data-parallel training over ``torch.distributed``: who this process is, and how N start.

``protege train --nproc N`` re-runs itself under ``torchrun`` (``torch.distributed.run``) with N
processes on this machine; a run started by ``torchrun`` directly (several machines, a
scheduler) is the same thing. Each process is a *rank*: it loads the data and the base, trains
on its share of every optimizer step's micro-batches, and DDP averages the LoRA gradients, so N
ranks take the steps one process would take with the same global batch (``trainer.loop``).
Rank 0 alone evaluates, writes the adapter and the report, and publishes.

Backends: ``nccl`` between GPUs (one per rank, ``cuda:LOCAL_RANK``), ``gloo`` on CPU. A rank
that dies closes its connections; the others fail at their next collective and ``torchrun``
stops the rest and exits non-zero, before anything is written or published.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import torch
import torch.distributed as dist

# A collective waits this long for the other ranks. Rank 0 computes the zero-shot baseline and
# evaluates between training runs while the others wait for the next step, so this bounds an
# evaluation; a rank that dies is noticed at once, not after it.
COLLECTIVE_TIMEOUT: Final = timedelta(hours=4)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (one rank, alone, outside ``torchrun``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # ranks on this machine: they share its memory

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: Mapping[str, str]) -> World:
    """The world ``torchrun`` describes in ``env`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``); one lone rank when it does not."""

    def number(key: str, default: int) -> int:
        try:
            return int(env.get(key, default))
        except ValueError as exc:
            raise ValueError(f"{key}={env[key]!r} is not a whole number") from exc

    size = number("WORLD_SIZE", 1)
    return World(
        rank=number("RANK", 0),
        size=size,
        local_rank=number("LOCAL_RANK", 0),
        local_size=number("LOCAL_WORLD_SIZE", size),
    )


def current() -> World:
    """The world of the process group this process joined, or one lone rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    found = world_from_env(os.environ)
    return World(dist.get_rank(), dist.get_world_size(), found.local_rank, found.local_size)


def rank_device(device: str, world: World) -> str:
    """The device this rank trains on: its own GPU (``cuda:LOCAL_RANK``) under ``cuda``."""
    if world.distributed and torch.device(device).type == "cuda":
        return f"cuda:{world.local_rank}"
    return device


@contextmanager
def joined(device: str) -> Iterator[World]:
    """Join the run's process group for the duration (nothing to join for one lone rank)."""
    world = world_from_env(os.environ)
    if not world.distributed:
        yield world
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield world
        # Every rank leaves together: a rank tearing its group down while another still
        # works with it (rank 0 writing, or finishing a sharded collective) has aborted the
        # process under gloo ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def leave(code: int, world: World) -> int:
    """``code``; a rank of a torchrun exits here at once instead (output flushed): its work is
    done and written, and the interpreter's teardown of torch's C++ threads has aborted ranks
    under gloo ("terminate called without an active exception"), failing a finished run."""
    if world.distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def launch_command(nproc: int, argv: Sequence[str], python: str = sys.executable) -> list[str]:
    """The ``torchrun`` command running ``protege`` with ``argv`` (``--nproc`` taken out) on
    ``nproc`` ranks of this machine, its rendezvous on the loopback interface."""
    return [
        python, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
        "--max-restarts", "0",
        "-m", "protege.cli", *without_nproc(argv),
    ]  # fmt: skip


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank (picklable values)."""
    if not world.distributed:
        return value
    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def smallest(value: int, world: World) -> int:
    """The smallest of every rank's ``value``."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def total(value: float, world: World) -> float:
    """The sum of every rank's ``value``."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item())


def _collective_device() -> torch.device:
    """Where a collective's tensors live: this rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
