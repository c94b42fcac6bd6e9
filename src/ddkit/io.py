"""The one file container of ddkit: hashed, atomic, safetensors only.

Every file ddkit writes with tensors in it (distilled sets, teachers, distillation
checkpoints, expert trajectories) is one ``.safetensors`` file (never pickle: reading
runs no code) with two metadata entries:

* ``ddkit``: a JSON object, the *header*; its ``format`` names the kind of file and its
  version, ``"<kind>/<version>"`` (e.g. ``ddkit.distilled-set/2``);
* ``sha256``: the SHA-256 over every tensor (name, dtype, shape, raw bytes, in name order)
  followed by the header JSON (:func:`tensor_digest`), so any change to data or header is
  detected on read.

Writes go to a temporary file beside the destination that is renamed onto it only when
complete (:func:`ddkit.utils.atomic_path`): a failed write leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddkit.errors import ArtifactError
from ddkit.utils import atomic_path

__all__ = ["HASH_KEY", "HEADER_KEY", "read", "read_header", "read_metadata", "tensor_digest", "write"]

HEADER_KEY = "ddkit"
HASH_KEY = "sha256"


def tensor_digest(tensors: dict[str, torch.Tensor], header_json: str) -> str:
    """SHA-256 (64 hex digits) over named tensors and a JSON string.

    Each tensor contributes ``"name|dtype|shape|"`` and its bytes (C order), in sorted name
    order; the JSON string comes last. Tensors must be on the CPU.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(header_json.encode())
    return h.hexdigest()


def write(path: str | Path, tensors: dict[str, torch.Tensor], header: dict[str, Any], *, fmt: str) -> Path:
    """Write ``tensors`` and a JSON ``header`` (with ``format = fmt``) to ``path``, atomically.

    Args:
        path: destination (``.safetensors``); its folder is created if needed.
        tensors: name → tensor (any device; stored as contiguous CPU copies).
        header: JSON-serialisable mapping (its ``format`` key is set to ``fmt``).
        fmt: ``"<kind>/<version>"``.

    Returns:
        ``Path(path)``.

    Raises:
        OutputError: the destination cannot be written.
        TypeError: the header is not JSON-serialisable (a programming error).
    """
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header_json = json.dumps({**header, "format": fmt}, sort_keys=True)
    digest = tensor_digest(cpu, header_json)
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={HEADER_KEY: header_json, HASH_KEY: digest})
    return Path(path)


def _metadata(p: Path, what: str) -> dict[str, str]:
    if not p.is_file():
        raise ArtifactError(f"{what} {str(p)!r} does not exist or is not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{str(p)!r} is not a {what} (not a safetensors file: {first})") from None


def read_metadata(path: str | Path, what: str = "ddkit file") -> dict[str, str]:
    """A container's raw safetensors metadata (string → string), unverified.

    Raises:
        ArtifactError: missing file, or not a safetensors file.
    """
    return _metadata(Path(path), what)


def _check_format(p: Path, header: dict[str, Any], formats: tuple[str, ...], what: str) -> None:
    fmt = header.get("format")
    if fmt in formats:
        return
    kinds = {f.rsplit("/", 1)[0] for f in formats}
    if isinstance(fmt, str) and fmt.rsplit("/", 1)[0] in kinds:
        raise ArtifactError(f"{str(p)!r} is a {what} in format {fmt!r}, which this ddkit cannot read (it reads "
                            f"{', '.join(formats)}); it was written by another ddkit version: upgrade ddkit")
    raise ArtifactError(f"{str(p)!r} is not a {what} (format {fmt!r}, expected {', '.join(formats)})")


def _header_key(p: Path, meta: dict[str, str], header_keys: tuple[str, ...], what: str, hashed: bool) -> str:
    key = next((k for k in header_keys if k in meta), None)
    if key is None or (hashed and HASH_KEY not in meta):
        raise ArtifactError(f"{str(p)!r} is a safetensors file but not a ddkit {what}")
    return key


def _parse_header(p: Path, raw: str, formats: tuple[str, ...], what: str) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{str(p)!r} has a malformed header ({exc})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{str(p)!r} has a malformed header (not a JSON object)")
    _check_format(p, header, formats, what)
    return header


def read_header(path: str | Path, formats: tuple[str, ...], *, what: str = "ddkit file",
                header_keys: tuple[str, ...] = (HEADER_KEY,)) -> dict[str, Any]:
    """The JSON header of a container file, format-checked, without reading the tensors.

    No hash check (that needs every tensor; see :func:`read`). For lazy readers such as
    the expert buffer, which read one row of a large tensor at a time.

    Args:
        path: the file. formats: accepted ``format`` values. what: name used in errors.
        header_keys: metadata keys that may hold the header (the first present is used;
            older files used other keys).

    Raises:
        ArtifactError: missing file, not safetensors, no header, malformed JSON, or a
            format not in ``formats`` (a newer version of the same kind is named as such).
    """
    p = Path(path)
    meta = _metadata(p, what)
    return _parse_header(p, meta[_header_key(p, meta, header_keys, what, hashed=False)], formats, what)


def read(path: str | Path, formats: tuple[str, ...], *, what: str = "ddkit file",
         header_keys: tuple[str, ...] = (HEADER_KEY,)) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a container file: ``(tensors on the CPU, header)``.

    Args: as :func:`read_header`.

    Raises:
        ArtifactError: as :func:`read_header`, or a missing hash, or a hash that does not
            match the contents (the file was modified or is corrupt).
    """
    p = Path(path)
    meta = _metadata(p, what)
    key = _header_key(p, meta, header_keys, what, hashed=True)
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{what} {str(p)!r} cannot be read: {str(exc).splitlines()[0]}") from None
    if tensor_digest(tensors, meta[key]) != meta[HASH_KEY]:
        raise ArtifactError(f"{str(p)!r} failed its SHA-256 check: the file was modified or is corrupt")
    return tensors, _parse_header(p, meta[key], formats, what)
