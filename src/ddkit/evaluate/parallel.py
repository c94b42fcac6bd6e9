"""Evaluation across processes: the (architecture, run) jobs of an evaluation split over ranks.

Evaluations are embarrassingly parallel: every network is trained from its own seed.
Started under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`world` joins the
process group (NCCL on CUDA, gloo on the CPU), each rank trains the runs ``i`` with
``i % world_size == rank`` on its own device (``cuda:LOCAL_RANK`` where there are GPUs),
and :func:`gather` collects every rank's results on every rank, so the table and JSON are
the ones a single process writes for the same seeds.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

import torch

__all__ = ["gather", "my_share", "rank_device", "world"]


def world() -> tuple[int, int]:
    """``(rank, world size)``; joins the process group when started by torchrun (idempotent)."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        _watch_for_crash()
        atexit.register(_leave)
    return dist.get_rank(), dist.get_world_size()


_crashed = False


def _watch_for_crash() -> None:
    """Note an uncaught exception, so that :func:`_leave` does not wait for ranks that never come."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        global _crashed
        _crashed = True
        previous(kind, value, tb)

    sys.excepthook = hook


def _leave() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    Without it a rank that reaches exit while gloo's threads still run is aborted by the C++
    runtime ("terminate called without an active exception", SIGABRT), which failed a CI run.
    After an uncaught exception the barrier is skipped (the other ranks may sit in another
    collective; torchrun stops them when this rank fails).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        if not _crashed:
            dist.barrier()
        dist.destroy_process_group()


def rank_device(device: str | torch.device) -> str | torch.device:
    """The device of this rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def my_share(jobs: int) -> list[int]:
    """The job indices 0..jobs−1 this rank runs (round robin)."""
    rank, size = world()
    return [i for i in range(jobs) if i % size == rank]


def gather(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` (picklable, from ddkit's own processes), concatenated, on every rank."""
    rank, size = world()
    if size == 1:
        return list(items)
    import torch.distributed as dist

    out: list[Any] = [None] * size
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]
