"""The ``Distiller`` contract, the method registry, configs and checkpoints.

A method is a subclass of :class:`Distiller` with a pydantic ``Config`` whose defaults are
its paper's, registered by name with :func:`register`. ``distill()`` turns a real
:class:`~ddkit.data.ImageDataset` into a :class:`~ddkit.artifact.DistilledSet`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError
from safetensors.torch import load_file, save_file

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset
from ddkit.errors import ArtifactError, ConfigError
from ddkit.utils import atomic_path

METHODS: dict[str, type[Distiller]] = {}


class MethodConfig(BaseModel):
    """Base of every method's configuration: typed, validated, no unknown keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    iterations: NonNegativeInt = 0
    checkpoint_every: NonNegativeInt = 0  # 0: never write checkpoints


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator adding a distiller to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Distiller]:
    """The registered distiller class called ``name``.

    Raises:
        ConfigError: no method of that name.
    """
    key = name.strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def make_config(cls: type[Distiller], overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Build ``cls.Config`` from overrides, turning validation failures into ConfigError."""
    try:
        return cls.Config(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(cls.Config.model_fields)
                problems.append(f"unknown setting {key!r} for method {cls.name!r} (known: {known})")
            else:
                problems.append(f"setting {key!r} of method {cls.name!r}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


@dataclass
class Checkpoint:
    """State of an interrupted distillation: tensors, next iteration, and its config.

    Stored as ``.safetensors`` (no pickle); ``meta`` holds the JSON config, method, IPC
    and seed so a resume with different settings is refused.
    """

    iteration: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(tmp),
                      metadata={"iteration": str(self.iteration), "meta": json.dumps(self.meta, sort_keys=True)})

    @classmethod
    def of_sgd(cls, iteration: int, syn: torch.Tensor, opt: torch.optim.SGD, meta: dict[str, Any]) -> Checkpoint:
        """A checkpoint of synthetic images ``syn`` optimised by SGD with momentum ``opt``."""
        return cls(iteration, {"syn": syn, "momentum": opt.state[syn]["momentum_buffer"]}, meta)

    def restore_sgd(self, syn: torch.Tensor, opt: torch.optim.SGD) -> int:
        """Copy the stored images into ``syn`` and the momentum into ``opt``; return the
        iteration to continue from (the inverse of :meth:`of_sgd`)."""
        with torch.no_grad():
            syn.copy_(self.tensors["syn"].to(syn.device))
        opt.state[syn]["momentum_buffer"] = self.tensors["momentum"].to(syn.device).clone()
        return self.iteration

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
            return cls(int(md["iteration"]), load_file(str(path)), json.loads(md["meta"]))
        except Exception as exc:  # any unreadable checkpoint is one clear error
            raise ArtifactError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None


class Distiller(ABC):
    """A dataset-distillation method.

    Subclasses set ``name`` and ``Config`` and implement :meth:`run`. The public entry is
    :meth:`distill`, which validates the request.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None):
        if isinstance(config, MethodConfig):
            self.config = config
        else:
            self.config = make_config(type(self), config)

    def distill(self, real: ImageDataset, ipc: int, *, device: torch.device | str = "cpu",
                seed: int = 0, progress: bool = True, checkpoint: str | Path | None = None,
                resume: bool = False) -> DistilledSet:
        """Distil ``real`` to ``ipc`` images per class.

        Args:
            real: the real training set (uint8 N×C×H×W images, int64 labels).
            ipc: images per class, 1 ≤ ipc ≤ the smallest class size.
            device: torch device for the computation.
            seed: drives every random choice (same seed, device, versions ⇒ same set).
            progress: show a progress bar.
            checkpoint: file for periodic checkpoints (iterative methods).
            resume: continue from ``checkpoint`` if it exists.

        Raises:
            ConfigError: bad IPC, or a resume whose checkpoint has different settings.
        """
        if not isinstance(ipc, int) or ipc <= 0:
            raise ConfigError(f"IPC must be a positive integer, got {ipc!r}")
        smallest = min(real.class_counts())
        if ipc > smallest:
            raise ConfigError(f"IPC {ipc} is larger than the smallest class of {real.name} "
                              f"({smallest} images)")
        from ddkit.utils import resolve_device

        return self.run(real, ipc, device=resolve_device(device), seed=seed, progress=progress,
                        checkpoint=Path(checkpoint) if checkpoint else None, resume=resume)

    @abstractmethod
    def run(self, real: ImageDataset, ipc: int, *, device: torch.device, seed: int, progress: bool,
            checkpoint: Path | None, resume: bool) -> DistilledSet:
        """Method body (inputs already validated)."""

    def make_set(self, real: ImageDataset, images: torch.Tensor, labels: torch.Tensor, ipc: int,
                 seed: int, **extra: Any) -> DistilledSet:
        """Wrap pixel-space images and labels with this method's provenance."""
        return DistilledSet(
            images=images.clamp(0, 1), labels=labels, method=self.name, dataset=real.name,
            mean=real.mean, std=real.std, class_names=list(real.class_names), ipc=ipc, seed=seed,
            config=self.config.model_dump(), extra=extra,
        )

    def checkpoint_meta(self, real: ImageDataset, ipc: int, seed: int) -> dict[str, Any]:
        cfg = self.config.model_dump()
        cfg.pop("iterations", None)  # a resumed run may extend the budget
        cfg.pop("checkpoint_every", None)
        return {"method": self.name, "dataset": real.name, "ipc": ipc, "seed": seed, "config": cfg}

    def load_checkpoint(self, path: Path | None, resume: bool, meta: dict[str, Any]) -> Checkpoint | None:
        """The checkpoint to resume from, or ``None``; refuses one with other settings."""
        if not resume or path is None or not path.exists():
            return None
        ck = Checkpoint.load(path)
        if ck.meta != meta:
            raise ConfigError(f"checkpoint {str(path)!r} was written with other settings "
                              f"({ck.meta}); delete it or resume with the same ones")
        return ck


def adam_state_tensors(opt: torch.optim.Adam, param: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """The Adam state of ``param`` as checkpoint tensors ``{prefix}_exp_avg``,
    ``{prefix}_exp_avg_sq`` and ``{prefix}_step`` (float32 scalar); empty before the first step."""
    st = opt.state.get(param, {})
    if not st:
        return {}
    step = st["step"] if torch.is_tensor(st["step"]) else torch.tensor(float(st["step"]))
    return {f"{prefix}_exp_avg": st["exp_avg"], f"{prefix}_exp_avg_sq": st["exp_avg_sq"],
            f"{prefix}_step": step.detach().to(torch.float32).reshape(())}


def restore_adam_state(opt: torch.optim.Adam, param: torch.Tensor, tensors: dict[str, torch.Tensor],
                       prefix: str) -> None:
    """Inverse of :func:`adam_state_tensors`: put the stored state of ``param`` back into
    ``opt`` (on ``param``'s device); does nothing if ``tensors`` holds none."""
    if f"{prefix}_exp_avg" not in tensors:
        return
    dev = param.device
    opt.state[param] = {"step": tensors[f"{prefix}_step"].to(torch.float32).clone().reshape(()),
                        "exp_avg": tensors[f"{prefix}_exp_avg"].to(dev).clone(),
                        "exp_avg_sq": tensors[f"{prefix}_exp_avg_sq"].to(dev).clone()}


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator for one iteration, derived from (seed, iteration).

    Seeding each iteration from the pair makes a resumed run draw exactly what an
    unbroken run draws, with no RNG state to save. Also reseeds torch's global RNG (used
    by ``nn.Module`` initialisation) from the same pair.
    """
    s = (int(seed) * 1_000_003 + int(iteration) * 7_919 + 12_345) % (2**63 - 1)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def sample_per_class(by_class: list[torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices per class, class-major (int64, K·n), drawn with ``generator``.

    Without replacement (a random permutation's first ``n``); if any class has fewer than
    ``n`` samples, every class is drawn with replacement instead.
    """
    if any(ix.numel() < n for ix in by_class):
        return torch.cat([ix[torch.randint(ix.numel(), (n,), generator=generator)] for ix in by_class])
    return torch.cat([ix[torch.randperm(ix.numel(), generator=generator)[:n]] for ix in by_class])


def initial_synthetic(real_x: torch.Tensor, by_class: list[torch.Tensor], ipc: int, init: str,
                      generator: torch.Generator) -> torch.Tensor:
    """The starting synthetic set, class-major, (K·ipc)×C×H×W on ``real_x``'s device.

    ``init="real"``: ``ipc`` random real images per class (the methods' default), taken from
    the standardised real images ``real_x``; ``init="noise"``: standard normal noise (in
    standardised units).

    Raises:
        ConfigError: ``init`` is neither.
    """
    if init == "real":
        return real_x[sample_per_class(by_class, ipc, generator).to(real_x.device)].clone()
    if init == "noise":
        shape = (len(by_class) * ipc, *real_x.shape[1:])
        return torch.randn(shape, generator=generator).to(real_x.device)
    raise ConfigError(f"init must be 'real' or 'noise', got {init!r}")
