"""``DistilledSet``: the one artifact between distillation and everything downstream.

On disk it is one container file (:mod:`ddkit.io`: safetensors, a JSON header, SHA-256
over tensors and header, written atomically), format ``ddkit.distilled-set/2``:

* tensors ``images`` float32 N×C×H×W (pixel space: 0 is black, 1 is white, but any finite
  value is kept — the reference implementations never clamp a distilled set, and neither
  does ddkit; displays and PNG exports clip) and ``labels`` (int64 (N,)
  class indices, or float32 N×K);
* typed attachments: ``lr`` (float32 scalar, a learned learning rate, MTT) and
  ``teacher.<name>`` (the state dict of a teacher network shipped with the set, CFM;
  described by ``teacher_info`` in the header);
* named extra tensors ``x.<name>`` (:attr:`DistilledSet.tensors`) for what later
  capabilities attach;
* the header: method, its (resolved) config, dataset, mean/std, class names, IPC, seed,
  ``label_kind`` (``hard``, ``probabilities`` or ``regression``: what the labels mean,
  written by the method), ddkit version, creation time, free-form ``extra``.

Files of format ``ddkit.distilled-set/1`` (ddkit ≤ 0.1.0) still load: they have no
``label_kind``, which is then derived once, at load, the way 0.1.0's evaluation did
(1-D labels: hard; N×K rows that are non-negative and sum to 1: probabilities; other N×K:
regression targets, as KIP/FRePo wrote them). A file of any other format is refused with
an error naming its format.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from ddkit import io
from ddkit.errors import ArtifactError
from ddkit.version import __version__

FORMAT = "ddkit.distilled-set/2"
FORMAT_V1 = "ddkit.distilled-set/1"
LABEL_KINDS = ("hard", "probabilities", "regression")
_TENSOR_FIELDS = ("images", "labels", "lr", "teacher", "tensors")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return float(v)


def _positive(v: float) -> float:
    if not v > 0:
        raise ValueError("must be > 0")
    return v


_Number = Annotated[StrictFloat | StrictInt, AfterValidator(_finite)]


class _Header(BaseModel):
    """The metadata of a distilled set, validated as strictly as method settings are."""

    model_config = ConfigDict(strict=True, extra="ignore")

    method: StrictStr = Field(min_length=1)
    dataset: StrictStr = Field(min_length=1)
    mean: tuple[_Number, ...] = Field(min_length=1)
    std: tuple[Annotated[_Number, AfterValidator(_positive)], ...] = Field(min_length=1)
    class_names: list[StrictStr] = Field(min_length=2)
    ipc: StrictInt = Field(ge=1)
    seed: StrictInt
    config: dict[str, Any]
    extra: dict[str, Any]
    version: StrictStr
    created: StrictStr


def _version() -> str:
    return __version__


def legacy_label_kind(labels: torch.Tensor) -> str:
    """What 0.1.0 assumed labels meant (used only for ``ddkit.distilled-set/1`` files).

    1-D: ``hard``; N×K with every entry ≥ 0 and rows summing to 1 (± 1e-3):
    ``probabilities``; any other N×K: ``regression`` (KIP/FRePo learned targets).
    """
    if labels.dim() != 2:
        return "hard"
    if bool((labels >= 0).all()) and torch.allclose(labels.sum(1), torch.ones(len(labels)), atol=1e-3):
        return "probabilities"
    return "regression"


def pixel_overflow(images: torch.Tensor, digits: int | None = None) -> float:
    """Fraction in [0, 1] of the values of a pixel-space tensor (any shape) outside [0, 1]
    (0 for an empty tensor), rounded to ``digits`` if given (``extra["pixel_overflow"]``
    records it to 6)."""
    frac = float(((images < 0) | (images > 1)).float().mean()) if images.numel() else 0.0
    return frac if digits is None else round(frac, digits)


@dataclass
class DistilledSet:
    """A distilled (synthetic) dataset with its provenance.

    Attributes:
        images: float32 N×C×H×W in pixel space (0 black, 1 white), unclamped: optimised
            images may leave [0, 1] and are stored and evaluated as they are, as in the
            authors' code; :meth:`clipped` gives the [0, 1] copy a PNG would hold.
        labels: int64 (N,) class indices, or float32 N×K (see ``label_kind``).
        method: the distillation method's registry name.
        dataset: the source dataset's registry name.
        mean, std: the source dataset's per-channel normalisation (pixel units).
        class_names: K names. ipc: images per class. seed: the distillation seed.
        config: the method's resolved configuration (JSON-serialisable).
        label_kind: ``hard`` (int64 (N,)), ``probabilities`` (float32 N×K, rows are
            distributions; trained on with cross-entropy) or ``regression`` (float32 N×K
            regression targets, e.g. KIP/FRePo learned labels; trained on with MSE).
            ``None`` at construction means ``hard`` for 1-D labels and is an error for N×K.
        lr: optional learned learning rate (float32 scalar tensor, MTT).
        extra: free-form JSON metadata (budget, timings, ...).
        version, created: ddkit version and ISO-8601 UTC time of creation.
        teacher: optional state dict of a teacher network (name → tensor), shipped with
            the set for soft-label evaluation (CFM); stored as ``teacher.<name>`` tensors.
        teacher_info: JSON description of the teacher (``model``: zoo name, ``channels``,
            ``num_classes``, ``image_size``, ...); present exactly when ``teacher`` is.
        tensors: named extra tensors (name → tensor), stored as ``x.<name>``.

    Raises:
        ArtifactError: on construction, when :meth:`validate` fails.
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
    label_kind: str | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = self.images.detach().to("cpu", torch.float32).contiguous()
        self.labels = self.labels.detach().cpu().contiguous()
        if self.lr is not None:
            self.lr = torch.as_tensor(self.lr, dtype=torch.float32).detach().cpu().reshape(())
        if self.teacher is not None:
            self.teacher = {str(k): v.detach().cpu().contiguous() for k, v in self.teacher.items()}
        self.tensors = {str(k): v.detach().cpu().contiguous() for k, v in (self.tensors or {}).items()}
        if self.label_kind is None and self.labels.dim() == 1:
            self.label_kind = "hard"
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
        """Whether the labels are N×K (probabilities or regression targets)."""
        return self.labels.dim() == 2

    def pixel_overflow(self) -> float:
        """Fraction in [0, 1] of image values outside the [0, 1] pixel range."""
        return pixel_overflow(self.images)

    def clipped(self) -> DistilledSet:
        """A copy whose images are clipped to [0, 1] (what ddkit ≤ 0.2 stored; an image
        file holds), with ``extra["clipped"] = True``: to measure what clipping costs."""
        from dataclasses import replace

        return replace(self, images=self.images.clamp(0, 1), extra={**self.extra, "clipped": True})

    def hard_labels(self) -> torch.Tensor:
        """int64 (N,) labels (argmax of N×K labels)."""
        return self.labels.argmax(1) if self.soft_labels else self.labels

    def normalized_images(self) -> torch.Tensor:
        """Images standardised with the source dataset's mean/std (N×C×H×W float32)."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (self.images - mean) / std

    def validate(self) -> None:
        """Check shapes, dtypes, value range, finiteness and the label kind.

        Raises:
            ArtifactError: naming the first problem found.
        """
        try:
            _Header(**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSOR_FIELDS})
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')} "
                        f"(got {e.get('input')!r:.60})" for e in exc.errors()]
            raise ArtifactError("distilled-set metadata: " + "; ".join(problems)) from None
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise ArtifactError(f"distilled images must be N×C×H×W, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ArtifactError("the distilled set has no images")
        if not torch.isfinite(x).all():
            raise ArtifactError("distilled images contain NaN or infinite values")
        if y.shape[0] != x.shape[0]:
            raise ArtifactError(f"{x.shape[0]} images but {y.shape[0]} labels")
        k = len(self.class_names)
        if y.dim() == 1:
            if y.dtype != torch.int64:
                raise ArtifactError(f"hard labels must be int64, got {y.dtype}")
            if y.numel() and (y.min() < 0 or y.max() >= k):
                raise ArtifactError(f"labels must be in 0..{k - 1}")
            if self.label_kind != "hard":
                raise ArtifactError(f"1-D labels are hard labels, but label_kind is {self.label_kind!r}")
        elif y.dim() == 2:
            if y.dtype != torch.float32 or y.shape[1] != k:
                raise ArtifactError(f"soft labels must be float32 N×{k}, got {y.dtype} {tuple(y.shape)}")
            if not torch.isfinite(y).all():
                raise ArtifactError("soft labels contain NaN or infinite values")
            if self.label_kind not in ("probabilities", "regression"):
                raise ArtifactError(f"N×K labels need label_kind 'probabilities' or 'regression', got "
                                    f"{self.label_kind!r}")
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
        for name, t in self.tensors.items():
            if not isinstance(t, torch.Tensor) or not name:
                raise ArtifactError(f"extra tensor {name!r} is not a named tensor")

    # ------------------------------------------------------------------ file format
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"images": self.images, "labels": self.labels}
        if self.lr is not None:
            t["lr"] = self.lr
        for name, v in (self.teacher or {}).items():
            t[f"teacher.{name}"] = v
        for name, v in self.tensors.items():
            t[f"x.{name}"] = v
        return t

    def _meta(self) -> dict[str, Any]:
        """The JSON header (without ``format``): every non-tensor field."""
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSOR_FIELDS}
        meta = json.loads(json.dumps(meta))  # a plain JSON copy
        if self.teacher_info is None:
            meta.pop("teacher_info")
        meta["mean"], meta["std"] = list(self.mean), list(self.std)
        return meta

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (``.safetensors``) atomically; return the path.

        Raises:
            ArtifactError: the set is invalid (NaN, wrong shapes).
            OutputError: the destination cannot be written.
        """
        self.validate()
        return io.write(path, self._tensors(), self._meta(), fmt=FORMAT)

    @classmethod
    def load(cls, path: str | Path, *, public_key: Any = None) -> DistilledSet:
        """Read and verify a distilled set written by :meth:`save` (formats /2 and /1).

        ``public_key`` (a PEM path or an ``Ed25519PublicKey``): also require a valid signature
        by that key's owner (:mod:`ddkit.signing`), inside the file or in ``FILE.sig``.

        Raises:
            ArtifactError: the file is missing, not a safetensors file, not a ddkit
                distilled set, of an unknown format version, its hash does not match
                (tampered or corrupt), its contents are invalid, or (with ``public_key``) it
                is unsigned, signed by another key, or changed after signing.
            ConfigError: ``public_key`` is not a readable Ed25519 public key.
        """
        p = Path(path)
        if public_key is not None:
            from ddkit.signing import verify_file

            verify_file(p, public_key)
        tensors, info = io.read(p, (FORMAT, FORMAT_V1), what="distilled set")
        fmt = info.pop("format")
        plain = {k for k in tensors if not k.startswith(("teacher.", "x."))}
        if plain - {"images", "labels", "lr"} or not {"images", "labels"} <= plain:
            raise ArtifactError(f"{str(p)!r} has unexpected tensors {sorted(tensors)}")
        try:
            info["mean"], info["std"] = tuple(info["mean"]), tuple(info["std"])
            teacher = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")} or None
            extra_t = {k[len("x."):]: v for k, v in tensors.items() if k.startswith("x.")}
            if (teacher is None) != (info.get("teacher_info") is None):
                raise ArtifactError(f"{str(p)!r}: teacher tensors and teacher_info do not go together")
            if fmt == FORMAT_V1:
                info["label_kind"] = legacy_label_kind(tensors["labels"])
            known = {f.name for f in fields(cls)} - set(_TENSOR_FIELDS)
            unknown = set(info) - known
            if unknown:
                raise ArtifactError(f"{str(p)!r} has unknown header fields {sorted(unknown)}")
            return cls(images=tensors["images"], labels=tensors["labels"], lr=tensors.get("lr"), teacher=teacher,
                       tensors=extra_t, **info)
        except (TypeError, KeyError) as exc:
            raise ArtifactError(f"{str(p)!r} has malformed metadata ({exc})") from None
