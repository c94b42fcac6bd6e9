"""Small shared helpers: device resolution, seeding, atomic file writes."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ddkit.errors import ConfigError, OutputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a ``torch.device``.

    ``auto`` picks CUDA when available, else the CPU.

    Raises:
        ConfigError: the name is not a device, or CUDA was asked for but is absent.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer.

    Returns a CPU ``torch.Generator`` seeded with ``seed`` for explicit sampling.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator for one iteration of a seeded loop, derived from (seed, iteration).

    Seeding each iteration from the pair makes a resumed run draw exactly what an
    unbroken run draws, with no RNG state to save. Also reseeds torch's global RNG (used
    by ``nn.Module`` initialisation and kornia) from the same pair. Negative iterations
    are used for one-off draws before a loop (initialisation: -1, teacher: -2, ...).
    """
    s = (int(seed) * 1_000_003 + int(iteration) * 7_919 + 12_345) % (2**63 - 1)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def check_writable(path: str | Path) -> Path:
    """Check that ``path`` can be created (its folder exists or can be made, and is writable).

    Raises:
        OutputError: the folder cannot be created or written, or ``path`` is a directory.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output path {str(p)!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {str(parent)!r} for {str(p)!r}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {str(parent)!r} is not writable")
    return p


def _umask() -> int:
    """The process umask (read by setting and restoring it; os offers no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing is half-written: on an exception the temporary file is removed and ``path``
    keeps its old content (or stays absent). The file gets the permissions a plain
    ``open(path, "w")`` would give (0666 minus the umask), not ``mkstemp``'s private 0600.

    Raises:
        OutputError: the destination folder is missing or not writable.
    """
    p = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
