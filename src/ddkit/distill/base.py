"""The one distillation loop: the method contract, the registry, configs and checkpoints.

A method is a subclass of :class:`Distiller` with a pydantic ``Config`` whose defaults are
its paper's, registered by name with :func:`register`. The base class owns everything
that is the same for every method: validation of the request, per-IPC/per-dataset paper
defaults, per-iteration seeding, resume, the progress bar, checkpoints, the divergence
check, a per-step hook, and building the :class:`~ddkit.artifact.DistilledSet`. A method
supplies only

* ``init_state(ctx)`` → :class:`LoopState`: its tensors, optimisers and networks;
* ``step(state, ctx, iteration, generator)`` → the loss of one iteration (a number);
* ``finish(state, ctx)`` → :class:`SetParts`: the images, labels and what else the set carries;

and, where it needs them, ``check`` (settings that depend on the data), ``total_iterations``,
``checkpoint_identity``, ``save_state``/``load_state`` (beyond the generic ones) and
``should_checkpoint``. ``docs/adding-a-method.md`` walks through one.

Seeding: iteration t draws everything from ``iteration_generator(seed, t)`` (which also
reseeds torch's global RNG), so a run resumed from a checkpoint at t makes the same draws
as an unbroken run and the checkpoint needs no RNG state.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from ddkit import io
from ddkit.artifact import LABEL_KINDS, DistilledSet, pixel_overflow
from ddkit.data import ImageDataset
from ddkit.errors import ArtifactError, ConfigError, DDKitError
from ddkit.progress import LoopProgress
from ddkit.utils import iteration_generator, resolve_device, table_row

__all__ = ["CHECKPOINT_FORMAT", "METHODS", "Distiller", "LoopState", "MethodConfig", "RunContext", "SetParts",
           "StepEvent", "get_method", "initial_synthetic", "iteration_generator", "list_methods", "make_config",
           "register", "sample_per_class"]

METHODS: dict[str, type[Distiller]] = {}
CHECKPOINT_FORMAT = "ddkit.checkpoint/2"


class MethodConfig(BaseModel):
    """Base of every method's configuration: typed, validated, no unknown keys.

    Shared names mean the same thing in every method: ``iterations`` (total updates of
    the distilled set), ``checkpoint_every`` (iterations between checkpoints, 0: never),
    ``lr_img`` (the images' learning rate), ``batch_real`` (real images per update),
    ``model``, ``init``. A field whose default is ``None`` takes the method's paper value
    for the IPC / dataset (:meth:`Distiller.resolve`); the resolved values are what the
    distilled set records.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    iterations: NonNegativeInt = 0
    checkpoint_every: NonNegativeInt = 0  # 0: never write checkpoints


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator adding a distiller to :data:`METHODS` under ``cls.name``.

    Raises:
        ConfigError: the name is empty or already registered (to another class).
    """
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ConfigError(f"a method needs a lower-case name, got {name!r} for {cls.__name__}")
    if name in METHODS and METHODS[name] is not cls:
        raise ConfigError(f"method {name!r} is already registered (by {METHODS[name].__module__}."
                          f"{METHODS[name].__name__})")
    if cls.declared_label_kinds() - set(LABEL_KINDS):
        raise ConfigError(f"method {name!r} declares unknown label kinds {cls.declared_label_kinds()}")
    METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    """The registered method names, in registration order."""
    return list(METHODS)


def get_method(name: str) -> type[Distiller]:
    """The registered distiller class called ``name``.

    Raises:
        ConfigError: no method of that name.
    """
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[key]


def make_config(cls: type[Distiller], overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Build ``cls.Config`` from overrides, turning validation failures into ConfigError."""
    try:
        return cls.Config(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, cls)) from None


def _validation_message(exc: ValidationError, cls: type[Distiller]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(cls.Config.model_fields)
            problems.append(f"unknown setting {key!r} for method {cls.name!r} (known: {known})")
        else:
            problems.append(f"setting {key!r} of method {cls.name!r}: {err['msg']}")
    return "; ".join(problems)


# ------------------------------------------------------------------------ the run's parts
@dataclass
class RunContext:
    """What one distillation run knows besides the method's own state.

    Attributes:
        real: the real training set. ipc: images per class. config: the resolved config.
        device, seed, progress: as given to :meth:`Distiller.distill`.
        sample_weights: optional float32 (N,) per-sample weights on ``real`` (≥ 0, every
            class with positive total weight), for methods that declare support.
        checkpoint: the checkpoint being resumed from (its ``tensors`` and ``values``), or
            ``None``; ``init_state`` may read it to skip expensive set-up (CFM's teacher).
        init_seconds: wall-clock seconds of ``init_state`` (+ restoring a checkpoint).
        aux: what ``check`` prepared for the run (e.g. MTT's opened expert buffer).
    """

    real: ImageDataset
    ipc: int
    config: Any
    device: torch.device
    seed: int
    progress: bool = False
    sample_weights: torch.Tensor | None = None
    checkpoint: Checkpoint | None = None
    init_seconds: float = 0.0
    aux: dict[str, Any] = field(default_factory=dict)
    _real_x: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def channels(self) -> int:
        return self.real.channels

    @property
    def image_size(self) -> int:
        return self.real.image_size[0]

    def real_x(self) -> torch.Tensor:
        """The real images, standardised, float32 N×C×H×W on the device (computed once;
        the field's datasets fit in memory)."""
        if self._real_x is None:
            self._real_x = self.real.normalize(self.real.float_images()).to(self.device)
        return self._real_x

    def class_labels(self) -> torch.Tensor:
        """int64 (K·IPC,) class-major labels ``0,…,0,1,…`` on the CPU."""
        return torch.arange(self.num_classes).repeat_interleave(self.ipc)

    def new_model(self, name: str, **kwargs) -> nn.Module:
        """A freshly initialised zoo network for this data, on the device (train mode)."""
        from ddkit.models import get_model

        return get_model(name, self.channels, self.num_classes, self.image_size, **kwargs).to(self.device)


@dataclass
class LoopState:
    """A method's state between iterations; what the generic checkpoint saves.

    Attributes:
        tensors: named tensors (restored in place when they already exist, so optimisers
            keep pointing at them).
        optimizers: named optimisers (their full ``state_dict``).
        modules: named networks (their ``state_dict``).
        values: JSON-serialisable numbers and lists (ages, counters).
        aux: anything else the method keeps for the run (not saved).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, Any] = field(default_factory=dict)


@dataclass
class SetParts:
    """What :meth:`Distiller.finish` returns: the content of the distilled set.

    Attributes:
        images: float32 N×C×H×W, standardised (dataset mean/std) unless ``pixel``.
        labels: int64 (N,) or float32 N×K. label_kind: one of the method's declared kinds.
        extra: method-specific metadata (merged after the loop's own: iterations,
            iterations_run, seconds, final_loss, device, ...).
        lr, teacher, teacher_info, tensors: the set's attachments (see DistilledSet).
        pixel: ``images`` are already in pixel space.
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_kind: str = "hard"
    extra: dict[str, Any] = field(default_factory=dict)
    lr: torch.Tensor | None = None
    teacher: dict[str, torch.Tensor] | None = None
    teacher_info: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    pixel: bool = False


@dataclass
class StepEvent:
    """Passed to the per-step hook after every iteration (and before its checkpoint).

    The hook may change ``state`` (e.g. the images) or ``context`` (e.g. the real images
    returned by ``context.real_x()``, to restamp a trigger); such changes are part of the
    run, and a resumed run sees them only if the hook makes them again.
    """

    iteration: int
    loss: float
    state: LoopState
    context: RunContext


Hook = Callable[[StepEvent], None]


@dataclass
class Checkpoint:
    """A checkpoint as read back: iteration done, tensors, the run's identity, values."""

    iteration: int
    tensors: dict[str, torch.Tensor]
    identity: dict[str, Any]
    values: dict[str, Any]
    optim: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """Read a checkpoint written by the loop.

        Raises:
            ArtifactError: unreadable, tampered, written by another ddkit version, or
                malformed (naming the file and how to proceed).
        """
        try:
            tensors, header = io.read(path, (CHECKPOINT_FORMAT,), what="distillation checkpoint")
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; delete the checkpoint to start afresh") from None
        try:
            it = int(header["iteration"])
            if it < 0:
                raise ValueError("negative iteration")
            return cls(it, tensors, dict(header["identity"]), dict(header.get("values", {})),
                       dict(header.get("optim", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"checkpoint {str(path)!r} is malformed ({exc}); delete it to start afresh") \
                from None


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"o.{name}.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "tensors": sorted(tensors)}


def _load_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]
                    ) -> None:
    missing = [k for k in info.get("tensors", []) if k not in tensors]
    if missing:
        raise KeyError(f"optimiser tensors {missing[:3]} are missing")
    state: dict[int, dict[str, Any]] = {}
    prefix = f"o.{name}."
    for key, val in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[k] = val
    for pid, vals in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in info["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


# --------------------------------------------------------------------------- the contract
class Distiller(ABC):
    """A dataset-distillation method (see the module docstring for the contract).

    Class attributes a method sets:
        name: registry name. Config: its pydantic config (paper defaults).
        label_kinds: the label kinds it can write (``hard``, ``probabilities``,
            ``regression``); :meth:`label_kind` says which one a config gives.
        ipc_defaults: the paper's per-IPC values of the config fields left ``None``,
            ``{ipc: {field: value}}``; ``ipc_rule`` picks the row for an IPC not in it:
            ``nearest`` (ties to the smaller IPC) or ``ceil`` (the smallest tabulated IPC
            ≥ the IPC, else the largest).
        supports_sample_weights: whether ``distill(..., sample_weights=...)`` is accepted.
        checkpoint_after_init: write a checkpoint right after ``init_state`` (expensive
            set-up, e.g. CFM's teacher).
        iterative: whether the method has a loop (coreset selections do not).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    label_kinds: ClassVar[tuple[str, ...]] = ("hard",)
    ipc_defaults: ClassVar[dict[int, dict[str, Any]]] = {}
    ipc_rule: ClassVar[Literal["nearest", "ceil"]] = "nearest"
    supports_sample_weights: ClassVar[bool] = False
    checkpoint_after_init: ClassVar[bool] = False
    iterative: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None):
        if isinstance(config, MethodConfig):
            self.config = config
        else:
            self.config = make_config(type(self), config)

    # ---------------------------------------------------------------- what a method supplies
    @classmethod
    def declared_label_kinds(cls) -> set[str]:
        """The label kinds this method may write (``label_kinds`` as a set)."""
        return set(cls.label_kinds)

    def label_kind(self, config: Any) -> str:
        """The label kind the (resolved) ``config`` produces (default: the first declared)."""
        return self.label_kinds[0]

    def dataset_defaults(self, real: ImageDataset, ipc: int) -> dict[str, Any]:
        """Paper defaults that depend on the data or follow a formula (fields left ``None``)."""
        return {}

    def check(self, ctx: RunContext) -> None:
        """Refuse settings that cannot work on this data (ConfigError), and prepare what the
        run needs before its checkpoint identity is known (into ``ctx.aux``). Default: nothing."""
        return None

    @abstractmethod
    def init_state(self, ctx: RunContext) -> LoopState:
        """The state before iteration 0 (initial images, optimisers, networks)."""

    def step(self, state: LoopState, ctx: RunContext, iteration: int, generator: torch.Generator) -> float:
        """One iteration; returns its loss (a finite number; NaN/inf stop the run)."""
        raise NotImplementedError(f"{self.name} has no iterations")

    @abstractmethod
    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        """The distilled set's content from the final state."""

    def total_iterations(self, ctx: RunContext) -> int:
        """Iterations of the run (default ``config.iterations``; 0 for non-iterative methods)."""
        return int(ctx.config.iterations) if self.iterative else 0

    def checkpoint_identity(self, ctx: RunContext) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: method, data, IPC, seed and the config
        without ``iterations``/``checkpoint_every`` (a resumed run may extend its budget)."""
        cfg = ctx.config.model_dump()
        cfg.pop("iterations", None)
        cfg.pop("checkpoint_every", None)
        return {"method": self.name, "dataset": ctx.real.name, "ipc": ctx.ipc, "seed": ctx.seed, "config": cfg}

    def should_checkpoint(self, state: LoopState, ctx: RunContext, done: int) -> bool:
        """Whether to write a checkpoint after ``done`` iterations (default every ``checkpoint_every``)."""
        every = ctx.config.checkpoint_every
        return bool(every) and done % every == 0

    def save_state(self, state: LoopState) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """Checkpoint content: (tensors, values, optimiser info) from the generic state."""
        tensors: dict[str, torch.Tensor] = {f"t.{k}": v for k, v in state.tensors.items()}
        for name, m in state.modules.items():
            tensors.update({f"m.{name}.{k}": v for k, v in m.state_dict().items()})
        optim: dict[str, Any] = {}
        for name, opt in state.optimizers.items():
            t, info = _optimizer_tensors(name, opt)
            tensors.update(t)
            optim[name] = info
        return tensors, dict(state.values), optim

    def load_state(self, state: LoopState, ck: Checkpoint, ctx: RunContext) -> None:
        """Put a checkpoint back into the state made by ``init_state`` (inverse of :meth:`save_state`).

        Raises:
            ArtifactError: the checkpoint's tensors do not fit the state (shape or missing).
        """
        t = ck.tensors
        dev = ctx.device
        missing = [name for name in state.tensors if f"t.{name}" not in t]
        if missing:
            raise ArtifactError(f"checkpoint does not fit this run (it lacks {missing[:3]})")
        try:
            for key, val in t.items():
                if not key.startswith("t."):
                    continue
                name = key[2:]
                if name in state.tensors:
                    cur = state.tensors[name]
                    if cur.shape != val.shape:
                        raise ArtifactError(f"tensor {name!r} has shape {tuple(val.shape)}, the run needs "
                                            f"{tuple(cur.shape)}")
                    with torch.no_grad():
                        cur.copy_(val.to(dev))
                else:
                    state.tensors[name] = val.to(dev)
            for name, m in state.modules.items():
                prefix = f"m.{name}."
                m.load_state_dict({k[len(prefix):]: v.to(dev) for k, v in t.items() if k.startswith(prefix)})
            for name, opt in state.optimizers.items():
                if name not in ck.optim:
                    raise ArtifactError(f"optimiser {name!r} is missing")
                _load_optimizer(name, opt, t, ck.optim[name])
        except (RuntimeError, KeyError, ValueError, IndexError) as exc:
            raise ArtifactError(f"checkpoint does not fit this run ({str(exc).splitlines()[0]})") from None
        state.values.update(ck.values)

    def title(self, ctx: RunContext) -> str:
        """The progress bar's description."""
        return f"{self.name} ipc={ctx.ipc}"

    # ---------------------------------------------------------------- what the base does
    def resolve(self, ipc: int, real: ImageDataset) -> MethodConfig:
        """The config with every ``None`` field that has a paper value filled in for this
        IPC (``ipc_defaults`` by ``ipc_rule``) and data (:meth:`dataset_defaults`).

        Raises:
            ConfigError: a filled-in value fails validation.
        """
        fill: dict[str, Any] = {}
        if self.ipc_defaults:
            fill.update(self.ipc_defaults[table_row(self.ipc_defaults, ipc, self.ipc_rule)])
        fill.update(self.dataset_defaults(real, ipc))
        current = self.config.model_dump()
        update = {k: v for k, v in fill.items() if k in current and current[k] is None}
        try:
            return type(self.config)(**{**current, **update})
        except ValidationError as exc:
            raise ConfigError(_validation_message(exc, type(self))) from None

    def _diverged(self, ctx: RunContext, it: int, what: str, path: Path | None) -> str:
        rates = {k: v for k, v in ctx.config.model_dump().items() if k.startswith("lr") and v is not None}
        kept = f"; the last checkpoint ({str(path)!r}) is kept" if path is not None and path.exists() else ""
        return (f"{self.name} diverged at iteration {it} ({what}); lower its learning rates "
                f"({', '.join(f'{k}={v:g}' for k, v in rates.items()) or 'lr_img'}){kept}")

    def _check_weights(self, real: ImageDataset, weights: torch.Tensor | None) -> torch.Tensor | None:
        if weights is None:
            return None
        if not self.supports_sample_weights:
            raise ConfigError(f"method {self.name!r} does not take per-sample weights")
        w = torch.as_tensor(weights, dtype=torch.float32).detach().cpu()
        if w.shape != (len(real),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ConfigError(f"sample_weights must be {len(real)} finite non-negative numbers, one per real image")
        if any(float(w[ix].sum()) <= 0 for ix in real.class_indices()):
            raise ConfigError("sample_weights give some class a total weight of 0")
        return w

    def _checkpoint(self, path: Path | None, resume: bool, identity: dict[str, Any]) -> Checkpoint | None:
        if not resume or path is None or not path.exists():
            return None
        ck = Checkpoint.read(path)
        if ck.identity != identity:
            raise ConfigError(f"checkpoint {str(path)!r} was written with other settings "
                              f"({ck.identity}); delete it or resume with the same ones")
        return ck

    def _save(self, path: Path, done: int, state: LoopState, identity: dict[str, Any]) -> None:
        tensors, values, optim = self.save_state(state)
        io.write(path, tensors, {"iteration": done, "identity": identity, "values": values, "optim": optim},
                 fmt=CHECKPOINT_FORMAT)

    def distill(self, real: ImageDataset, ipc: int, *, device: torch.device | str = "cpu", seed: int = 0,
                progress: bool = True, checkpoint: str | Path | None = None, resume: bool = False,
                hook: Hook | None = None, sample_weights: torch.Tensor | None = None) -> DistilledSet:
        """Distil ``real`` to ``ipc`` images per class.

        Args:
            real: the real training set (uint8 N×C×H×W images, int64 labels).
            ipc: images per class, an integer with 1 ≤ ipc ≤ the smallest class size.
            device: torch device for the computation.
            seed: drives every random choice (same seed, device, versions ⇒ same set).
            progress: show a progress bar.
            checkpoint: file for periodic checkpoints (iterative methods).
            resume: continue from ``checkpoint`` if it exists.
            hook: called after every iteration with a :class:`StepEvent`.
            sample_weights: float (N,) ≥ 0, one weight per real image (methods with
                ``supports_sample_weights`` only).

        Returns:
            The :class:`DistilledSet`; its ``config`` is the resolved config, its ``extra``
            the loop's record (iterations, iterations_run, seconds, final_loss, device, ...)
            and the method's.

        Raises:
            ConfigError: bad IPC, settings, weights, a checkpoint with other settings or
                past the budget, or a run whose loss became NaN/infinite (diverged).
            ArtifactError: an unreadable or mismatched checkpoint.
        """
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc <= 0:
            raise ConfigError(f"IPC must be a positive integer, got {ipc!r}")
        smallest = min(real.class_counts())
        if ipc > smallest:
            raise ConfigError(f"IPC {ipc} is larger than the smallest class of {real.name} ({smallest} images)")
        ctx = RunContext(real, ipc, self.resolve(ipc, real), resolve_device(device), int(seed), progress,
                         self._check_weights(real, sample_weights))
        self.check(ctx)
        path = Path(checkpoint) if checkpoint else None
        identity = self.checkpoint_identity(ctx)
        ctx.checkpoint = self._checkpoint(path, resume, identity)
        total = self.total_iterations(ctx)
        start = ctx.checkpoint.iteration if ctx.checkpoint is not None else 0
        if start > total:
            raise ConfigError(f"checkpoint {str(path)!r} is at iteration {start}, past this run's budget of "
                              f"{total}; resume with iterations ≥ {start} or delete it")
        t0 = time.perf_counter()
        state = self.init_state(ctx)
        if ctx.checkpoint is not None:
            self.load_state(state, ctx.checkpoint, ctx)
        elif path is not None and self.checkpoint_after_init and total > 0:
            self._save(path, 0, state, identity)
        ctx.init_seconds = time.perf_counter() - t0
        loss_val = float("nan")
        t1 = time.perf_counter()
        with LoopProgress(self.title(ctx), total, start, enabled=progress and total > 0) as bar:
            for it in range(start, total):
                g = iteration_generator(ctx.seed, it)
                loss_val = float(self.step(state, ctx, it, g))
                bad = None if math.isfinite(loss_val) else f"loss {loss_val}"
                for name, t in state.tensors.items():
                    if bad is None and t.requires_grad and not bool(torch.isfinite(t.detach()).all()):
                        bad = f"non-finite values in {name!r}"
                if bad is not None:
                    raise ConfigError(self._diverged(ctx, it, bad, path))
                bar.update(loss_val)
                if hook is not None:
                    hook(StepEvent(it, loss_val, state, ctx))
                done = it + 1
                if path is not None and self.should_checkpoint(state, ctx, done):
                    self._save(path, done, state, identity)
        seconds = time.perf_counter() - t1
        parts = self.finish(state, ctx)
        if parts.label_kind not in self.label_kinds:
            raise DDKitError(f"method {self.name!r} produced label kind {parts.label_kind!r}, "
                             f"not one it declares ({self.label_kinds})")
        run = total - start
        extra: dict[str, Any] = {}
        if self.iterative:
            extra = {"iterations": total, "iterations_run": run, "seconds": round(seconds, 2),
                     "seconds_per_iteration": round(seconds / run, 4) if run else None,
                     "init_seconds": round(ctx.init_seconds, 2), "final_loss": loss_val, "device": str(ctx.device)}
        extra.update(parts.extra)
        images = parts.images if parts.pixel else real.denormalize(parts.images.detach())
        images = images.detach().cpu()  # unclamped, as the authors' code evaluates it
        extra["pixel_overflow"] = pixel_overflow(images, 6)
        return DistilledSet(
            images=images, labels=parts.labels.detach().cpu(), method=self.name,
            dataset=real.name, mean=real.mean, std=real.std, class_names=list(real.class_names), ipc=ipc,
            seed=ctx.seed, config=ctx.config.model_dump(), extra=extra, lr=parts.lr, teacher=parts.teacher,
            teacher_info=parts.teacher_info, label_kind=parts.label_kind, tensors=parts.tensors,
        )


# ------------------------------------------------------------------------ shared helpers
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
