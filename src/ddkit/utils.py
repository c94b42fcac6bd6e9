"""Small shared helpers: device resolution, seeding, atomic file writes."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
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


#: characters mkstemp adds around a target's name for its temporary file: ".{name}.XXXXXXXX.tmp"
TEMP_EXTRA = 14


def table_row(table: dict[int, object], ipc: int, rule: str = "nearest") -> int:
    """The key of ``table`` (a table by IPC, or by image count) whose row applies to ``ipc``:
    ``nearest`` (ties to the smaller key) or ``ceil`` (the smallest key ≥ ``ipc``, else the
    largest). Used by the methods' IPC tables and the evaluation protocols' tables."""
    rows = sorted(table)
    if rule == "ceil":
        return next((r for r in rows if r >= ipc), rows[-1])
    return min(rows, key=lambda r: (abs(r - ipc), r))


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_writable(path: str | Path, *, suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can be written; creates nothing.

    Checks that ``path`` is not a folder, that its nearest existing ancestor folder is a
    folder where a file can really be created (a probe file is created and removed: this
    catches read-only mounts and pseudo file systems such as ``/proc``, where permission
    bits say yes), and that the file name, with each of ``suffixes`` (e.g. ``".ckpt"``)
    and the temporary-file decoration, fits the file system's name limit.

    Raises:
        OutputError: naming the path and the problem.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output path {str(p)!r} is a directory; give a file name")
    if not p.name:
        raise OutputError(f"output path {str(p)!r} has no file name")
    parent = p.parent if str(p.parent) else Path(".")
    anc = _existing_ancestor(parent)
    if not anc.is_dir():
        raise OutputError(f"cannot create {str(p)!r}: {str(anc)!r} is not a folder")
    limit = _name_max(anc)
    longest = max(len((p.name + s).encode()) for s in ("", *suffixes)) + TEMP_EXTRA
    if longest > limit:
        raise OutputError(f"output file name {p.name[:40]!r}... is too long ({len(p.name.encode())} bytes; with the "
                          f"temporary and {', '.join(suffixes) or 'no'} suffixes it needs {longest}, the limit is "
                          f"{limit}); use a shorter name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ddkit-probe.", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {str(anc)!r} (for {str(p)!r}): {exc.strerror or exc}") from None
    return p


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; return the created ones, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            _remove_empty(missing)
            raise OutputError(f"cannot create folder {str(d)!r}: {exc.strerror or exc}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask (read by setting and restoring it; os offers no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing is half-written: on an exception the temporary file is removed, folders this
    call created are removed again, and ``path`` keeps its old content (or stays absent).
    On success the file is flushed to disk (fsync) before the rename and the folder after
    it. The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus
    the umask), not ``mkstemp``'s private 0600.

    Raises:
        OutputError: the destination cannot be created or written.
    """
    p = check_writable(path)
    created = _make_parents(p.parent if str(p.parent) else Path("."))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def output_lock(path: str | Path, *, suffixes: tuple[str, ...] = ()) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` for a run (``filelock``, non-blocking).

    A second run to the same output is refused at once instead of overwriting the first
    one's result (and sharing its checkpoint). While the lock is held, temporary files
    that a killed earlier run left beside ``path`` (and beside ``path`` + each of
    ``suffixes``) are removed. The lock file ``.NAME.lock`` lives beside ``path`` and is
    removed on exit; folders created for it are removed again if the run fails and left
    them empty.

    Raises:
        OutputError: another process holds the lock, or the folder cannot be written.
    """
    import filelock

    p = check_writable(path, suffixes=suffixes)
    parent = p.parent if str(p.parent) else Path(".")
    created = _make_parents(parent)
    lock_path = parent / f".{p.name}.lock"
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        _remove_empty(created)
        raise OutputError(f"another ddkit run is writing {str(p)!r} (it holds {str(lock_path)!r}); wait for it to "
                          f"finish or choose another output") from None
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot lock {str(p)!r}: {exc.strerror or exc}") from None
    ok = False
    try:
        for name in (p.name, *(p.name + s for s in suffixes)):
            for stale in parent.glob(f".{glob.escape(name)}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        yield p
        ok = True
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        lock.release()
        if not ok:
            _remove_empty(created)


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile``'s default backend can build code for ``device`` (a C++
    compiler on the PATH for CPU; Triton importable for CUDA)."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def decide_compile(setting, iterations: int, device: torch.device, unit: str = "iterations",
                   threshold: int = 200) -> tuple[bool, str]:
    """(compile?, reason) for a ``compile`` setting (``True``, ``False`` or ``"auto"``).

    ``"auto"`` compiles when ``iterations`` (distillation iterations, or optimiser steps of
    a training run: ``unit`` names them in the reason) are at least ``threshold``, enough
    to amortise the first, compiling one, and :func:`compiler_available` says a compiler
    is present.
    """
    if setting is True or setting is False:
        return bool(setting), "set explicitly"
    if iterations < threshold:
        return False, f"auto: {iterations} {unit} (< {threshold}) do not amortise compiling"
    if not compiler_available(device):
        return False, f"auto: no compiler for {device.type} (C++ compiler on CPU, Triton on CUDA)"
    return True, "auto"


def bf16_units(device: torch.device) -> str | None:
    """Name the hardware bf16 matrix support of ``device``, or ``None`` when it has none.

    CPU (Linux): ``amx_bf16`` (Intel AMX tiles) or ``avx512_bf16`` from ``/proc/cpuinfo``;
    elsewhere ``None`` (unknown). CUDA: ``"cuda"`` when ``torch.cuda.is_bf16_supported()``.
    Without such units bf16 autocast still runs but is emulated: measured 20× slower than
    FP32 on an AMD EPYC with AVX2 only (docs/methods.md, "Speed").
    """
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    for name in ("amx_bf16", "avx512_bf16"):
        if name in flags:
            return name
    return None


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is ``"fp32"`` or ``"bf16"``.

    Raises:
        ConfigError: any other value (one line naming it).
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, not {precision!r}")
    return precision


def describe_precision(precision: str, device: torch.device, where: str) -> dict[str, object]:
    """The record of a ``precision`` setting for a result's metadata.

    Args:
        precision: ``"fp32"`` or ``"bf16"``. device: where the run computes.
        where: what ran under bf16 autocast (a phrase, stored as ``autocast``).

    Returns:
        ``{"precision": "fp32"}``, or for bf16 ``{"precision": "bf16", "autocast": where,
        "bf16_units": <name from bf16_units, or "none (emulated: slow)">}``.

    Raises:
        ConfigError: ``precision`` is neither ``"fp32"`` nor ``"bf16"``.
    """
    if check_precision(precision) == "fp32":
        return {"precision": "fp32"}
    units = bf16_units(device)
    return {"precision": "bf16", "autocast": where, "bf16_units": units or "none (emulated: slow)"}
