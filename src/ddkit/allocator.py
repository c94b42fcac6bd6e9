"""Run ddkit's CPU work under jemalloc instead of glibc's malloc (exact; speed only).

Why: on a CPU, every activation of a ConvNet-3 batch (256 images × 128 channels × 28 × 28
× 4 B ≈ 100 MB) is larger than glibc's largest mmap threshold (32 MB), so glibc maps fresh
pages for it and unmaps them on free, every forward pass; the kernel zeroes and faults each
page in again. Measured on a 2-core AMD EPYC (AVX2, torch 2.14.1, 2 threads; 6 eager DM
iterations on Fashion-MNIST, IPC 10): glibc 45–48 s wall with 32–36 s of system time and
6.5 M page faults; jemalloc with the decay settings below 26–30 s, 5–7 s system, 0.8 M
faults (the PyTorch CPU tuning guide's longer setting, with a background thread and
``oversize_threshold:1``, 29–32 s: no better on 2 cores); tcmalloc 30–32 s. jemalloc with its
default settings did not help (44 s): it hands large freed runs back to the kernel at once.
The allocator does not change any result, only the time.

An allocator is chosen when a process starts, so this module only prepares the
environment of a process to come (the re-exec costs one more start of Python and the
import of ddkit: ``ddkit --help`` took 7.7 s against 4.8 s with ``DDKIT_ALLOCATOR=system``
on that machine, a small price next to any distillation or evaluation):

- the ``ddkit`` command re-executes itself once under jemalloc when the library is
  installed (Debian: ``apt-get install libjemalloc2``; ``scripts/setup.sh`` does it as
  root) and ``DDKIT_ALLOCATOR`` is not ``system``;
- ``eval "$(python -m ddkit.allocator)"`` prints the ``export`` lines for a shell, so
  that a script or notebook started from that shell gets it too (``scripts/test.sh``
  and the benchmarks' instructions use it); it prints nothing when jemalloc is absent.

``DDKIT_ALLOCATOR``: ``auto`` (default: jemalloc when found, else the system's) or
``system`` (never preload). Anything else is an error naming the variable.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

#: Where Debian/Ubuntu, Fedora and Alpine put the shared library.
SEARCH = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
#: Keep freed pages for reuse instead of returning them to the kernel (memory stays at the
#: run's peak, as the PyTorch CPU tuning guide's setting does).
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_MARK = "DDKIT_ALLOCATOR_REEXEC"


def _mode() -> str:
    mode = os.environ.get("DDKIT_ALLOCATOR", "auto").strip().lower() or "auto"
    if mode not in ("auto", "system"):
        raise SystemExit(f"error: DDKIT_ALLOCATOR must be 'auto' or 'system', got {mode!r}")
    return mode


def find_jemalloc() -> str | None:
    """Path of an installed ``libjemalloc.so.2`` on Linux, or None (no error: optional)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((p for p in SEARCH if Path(p).is_file()), None)


def active() -> str:
    """The allocator this process runs under: ``"jemalloc"`` or ``"system"``."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def environment() -> dict[str, str]:
    """The variables to add for jemalloc: ``{}`` when it is absent, already preloaded, or
    ``DDKIT_ALLOCATOR=system``. Raises SystemExit (one line) for a bad ``DDKIT_ALLOCATOR``."""
    if _mode() == "system" or active() == "jemalloc":
        return {}
    lib = find_jemalloc()
    if lib is None:
        return {}
    preload = os.environ.get("LD_PRELOAD", "")
    env = {"LD_PRELOAD": f"{lib}:{preload}" if preload else lib}
    if "MALLOC_CONF" not in os.environ:
        env["MALLOC_CONF"] = MALLOC_CONF
    return env


def reexec(argv: list[str] | None = None) -> None:
    """Replace this process by the same command under jemalloc, once; return when nothing
    is to be done (absent library, already active, ``DDKIT_ALLOCATOR=system``, or a second
    attempt, so a failing preload cannot loop)."""
    if os.environ.get(_MARK):
        return
    env = environment()
    if not env:
        return
    argv = list(sys.argv if argv is None else argv)
    os.environ.update(env)
    os.environ[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv])


def main() -> None:
    """``python -m ddkit.allocator``: print ``export`` lines for a POSIX shell."""
    for key, value in environment().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
