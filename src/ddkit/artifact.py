"""``DistilledSet``: the one artifact between distillation and everything downstream.

On disk it is one ``.safetensors`` file (never pickle: loading a distilled set runs no
code). Tensors: ``images`` float32 N×C×H×W in pixel space [0, 1]; ``labels`` int64 (N,)
hard labels or float32 N×K soft labels; optional ``lr`` float32 scalar (a learned
learning rate, MTT); optional ``teacher.<name>`` tensors, the state dict of a teacher
network shipped with the set (CFM, soft-label evaluation), described by ``teacher_info``
in the JSON (zoo model name, channels, classes, image size, ...). Metadata (string →
string): ``ddkit`` holds a JSON object (method, its config, dataset, mean/std, class
names, IPC, seed, ddkit version, creation time, free-form ``extra``) and ``sha256`` the
SHA-256 over every tensor (name, dtype, shape, bytes, in name order) and the ``ddkit``
JSON, so any change to data or metadata is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddkit.errors import ArtifactError
from ddkit.utils import atomic_path

FORMAT = "ddkit.distilled-set/1"


def tensor_digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """SHA-256 (hex) over named tensors (name, dtype, shape, bytes; in name order) and a
    JSON string: the integrity check of ddkit's safetensors files (distilled sets, teachers)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(meta_json.encode())
    return h.hexdigest()


def _version() -> str:
    from ddkit import __version__

    return __version__


@dataclass
class DistilledSet:
    """A distilled (synthetic) dataset with its provenance.

    Attributes:
        images: float32 N×C×H×W, pixel space [0, 1].
        labels: int64 (N,) class indices, or float32 N×K soft labels.
        method: the distillation method's registry name.
        dataset: the source dataset's registry name.
        mean, std: the source dataset's per-channel normalisation (pixel units).
        class_names: K names. ipc: images per class. seed: the distillation seed.
        config: the method's configuration (JSON-serialisable).
        lr: optional learned learning rate (float32 scalar tensor, MTT).
        extra: free-form JSON metadata (budget, timings, ...).
        version, created: ddkit version and ISO-8601 UTC time of creation.
        teacher: optional state dict of a teacher network (name → tensor), shipped with
            the set for soft-label evaluation (CFM); stored as ``teacher.<name>`` tensors.
        teacher_info: JSON description of the teacher (``model``: zoo name, ``channels``,
            ``num_classes``, ``image_size``, ...); present exactly when ``teacher`` is.
    """

    images: torch.Tensor
    labels: torch.Tensor
    method: str
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    ipc: int
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    lr: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = field(default_factory=_version)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    teacher: dict[str, torch.Tensor] | None = None
    teacher_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.images = self.images.detach().to("cpu", torch.float32).contiguous()
        self.labels = self.labels.detach().cpu().contiguous()
        if self.lr is not None:
            self.lr = torch.as_tensor(self.lr, dtype=torch.float32).detach().cpu().reshape(())
        if self.teacher is not None:
            self.teacher = {str(k): v.detach().cpu().contiguous() for k, v in self.teacher.items()}
        self.validate()

    @property
    def has_teacher(self) -> bool:
        """Whether the set ships a teacher network (``teacher`` and ``teacher_info``)."""
        return self.teacher is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def soft_labels(self) -> bool:
        return self.labels.dim() == 2

    def hard_labels(self) -> torch.Tensor:
        """int64 (N,) labels (argmax of soft labels)."""
        return self.labels.argmax(1) if self.soft_labels else self.labels

    def normalized_images(self) -> torch.Tensor:
        """Images standardised with the source dataset's mean/std (N×C×H×W float32)."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (self.images - mean) / std

    def validate(self) -> None:
        """Check shapes, dtypes, value range and finiteness.

        Raises:
            ArtifactError: naming the first problem found.
        """
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise ArtifactError(f"distilled images must be N×C×H×W, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ArtifactError("distilled images contain NaN or infinite values")
        if x.numel() and (x.min() < -1e-4 or x.max() > 1 + 1e-4):
            raise ArtifactError(f"distilled images must be in [0, 1] pixel space, got range "
                                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        if y.shape[0] != x.shape[0]:
            raise ArtifactError(f"{x.shape[0]} images but {y.shape[0]} labels")
        k = len(self.class_names)
        if y.dim() == 1:
            if y.dtype != torch.int64:
                raise ArtifactError(f"hard labels must be int64, got {y.dtype}")
            if y.numel() and (y.min() < 0 or y.max() >= k):
                raise ArtifactError(f"labels must be in 0..{k - 1}")
        elif y.dim() == 2:
            if y.dtype != torch.float32 or y.shape[1] != k:
                raise ArtifactError(f"soft labels must be float32 N×{k}, got {y.dtype} {tuple(y.shape)}")
            if not torch.isfinite(y).all():
                raise ArtifactError("soft labels contain NaN or infinite values")
        else:
            raise ArtifactError(f"labels must be (N,) or N×K, got shape {tuple(y.shape)}")
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise ArtifactError("mean/std must have one entry per image channel")
        if (self.teacher is None) != (self.teacher_info is None):
            raise ArtifactError("a shipped teacher needs both its weights and teacher_info")
        if self.teacher is not None:
            if not self.teacher or not isinstance(self.teacher_info, dict) or "model" not in self.teacher_info:
                raise ArtifactError("teacher must be a non-empty state dict and teacher_info must name its model")
            for name, t in self.teacher.items():
                if not isinstance(t, torch.Tensor) or (t.is_floating_point() and not torch.isfinite(t).all()):
                    raise ArtifactError(f"teacher tensor {name!r} is not a finite tensor")

    # ------------------------------------------------------------------ file format
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"images": self.images, "labels": self.labels}
        if self.lr is not None:
            t["lr"] = self.lr
        for name, v in (self.teacher or {}).items():
            t[f"teacher.{name}"] = v
        return t

    def _meta(self) -> dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("images", "labels", "lr", "teacher")}
        meta = json.loads(json.dumps(meta))  # a plain JSON copy, as asdict made before
        if self.teacher_info is None:
            meta.pop("teacher_info")  # files without a teacher keep their exact old layout
        meta["format"] = FORMAT
        meta["mean"], meta["std"] = list(self.mean), list(self.std)
        return meta

    _digest = staticmethod(tensor_digest)

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.safetensors``) atomically; return the path.

        Raises:
            ArtifactError: the set is invalid (NaN, wrong shapes).
            OutputError: the destination cannot be written.
        """
        self.validate()
        tensors = self._tensors()
        meta_json = json.dumps(self._meta(), sort_keys=True)
        digest = self._digest(tensors, meta_json)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"ddkit": meta_json, "sha256": digest})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> DistilledSet:
        """Read and verify a distilled set written by :meth:`save`.

        Raises:
            ArtifactError: the file is missing, not a safetensors file, not a ddkit
                distilled set, its hash does not match (tampered or corrupt), or its
                contents are invalid.
        """
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"{str(p)!r} does not exist or is not a file")
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{str(p)!r} is not a distilled set (not a safetensors file: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if "ddkit" not in meta or "sha256" not in meta:
            raise ArtifactError(f"{str(p)!r} is a safetensors file but not a ddkit distilled set")
        plain = {k for k in tensors if not k.startswith("teacher.")}
        if plain - {"images", "labels", "lr"} or not {"images", "labels"} <= plain:
            raise ArtifactError(f"{str(p)!r} has unexpected tensors {sorted(tensors)}")
        if cls._digest(tensors, meta["ddkit"]) != meta["sha256"]:
            raise ArtifactError(f"{str(p)!r} failed its SHA-256 check: the file was modified or is corrupt")
        try:
            info = json.loads(meta["ddkit"])
            if info.pop("format", None) != FORMAT:
                raise ArtifactError(f"{str(p)!r}: unknown distilled-set format")
            info["mean"], info["std"] = tuple(info["mean"]), tuple(info["std"])
            teacher = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")} or None
            if (teacher is None) != (info.get("teacher_info") is None):
                raise ArtifactError(f"{str(p)!r}: teacher tensors and teacher_info do not go together")
            return cls(images=tensors["images"], labels=tensors["labels"], lr=tensors.get("lr"), teacher=teacher,
                       **info)
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{str(p)!r} has malformed metadata ({exc})") from None
