"""Expert trajectories (the "buffer") for MTT (Cazenavette et al., CVPR 2022, Sec. 3.1).

An *expert* is a network trained on the real training set; its *expert trajectory* is its
parameters after every epoch, epoch 0 being the initialisation. MTT's distillation starts
a student at an expert's epoch-t parameters θ*_t and compares it with θ*_{t+M}.

Training (:func:`train_experts`) follows MTT's ``buffer.py`` defaults: plain SGD (lr 0.01,
momentum 0, weight decay 0, no learning-rate decay), batch 256, cross-entropy, DSA
augmentation (``color_crop_cutout_flip_scale_rotate``, one op per batch and parameters per
image, as in training with DSA) on the real batches, 50 epochs, ConvNet-3. Epochs run
through the shared loop :func:`ddkit.train.train_model`, one epoch per call; with momentum 0
the optimiser has no state, so that is the same as one long run. Deviations, each a
parameter: ``experts`` defaults to 10 (the paper trains 100 per dataset; fewer experts
are faster to build and, per the MTT README, give worse but usable results);
``train_subset`` (default ``None`` = the whole training set, as in the paper) trains the
experts on that many images per class, for small buffers on a CPU.

Buffer directory layout (``FORMAT = "ddkit.expert-buffer/2"``)::

    manifest.json                 the settings below, as JSON (written atomically)
    expert_0000.safetensors       a :mod:`ddkit.io` container (``ddkit.expert/2``, SHA-256):
    expert_0001.safetensors       tensor "trajectory": float32 (e+1)×P, row j = the P
    ...                           parameters after epoch j, flattened in
                                  ``named_parameters()`` order; header: the expert index,
                                  epochs_done e, per-epoch mean training loss, and the
                                  manifest digest

Every file is written atomically (temporary file + rename); every expert file's hash is
checked when a buffer is opened. Buffers of format ``ddkit.expert-buffer/1`` (ddkit 0.1.0,
expert files without a hash) are still read, unverified; they cannot be extended. Each epoch's random draws
(shuffling, augmentation) come from a generator seeded by (seed, expert, epoch) and the
initialisation from (seed, expert), so re-running the same command resumes exactly: finished
experts are skipped and a partly trained expert continues from its last stored epoch with
the same trajectory an unbroken run gives (bit-identical on the CPU; cuDNN kernels may
differ in the last bits on a GPU).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ddkit import io
from ddkit.augment import DEFAULT_STRATEGY, DSA, DSAConfig
from ddkit.data import ImageDataset
from ddkit.errors import ArtifactError, ConfigError
from ddkit.models import get_model
from ddkit.progress import LoopProgress
from ddkit.train import TrainConfig, train_model
from ddkit.utils import atomic_path, check_writable, resolve_device

__all__ = ["FORMAT", "ExpertBuffer", "expert_generator", "train_experts"]

FORMAT = "ddkit.expert-buffer/2"
FORMAT_V1 = "ddkit.expert-buffer/1"
EXPERT_FORMAT = "ddkit.expert/2"
MANIFEST = "manifest.json"
# settings recorded for provenance only; they may differ between runs on one buffer
_PROVENANCE_KEYS = ("ddkit_version", "experts_requested", "device")


def expert_generator(seed: int, expert: int, epoch: int) -> torch.Generator:
    """A CPU generator for one expert's epoch (``epoch = -1``: its initialisation).

    Seeded from (seed, expert, epoch) so a resumed buffer draws what an unbroken run draws;
    also reseeds torch's global RNG (used by ``nn.Module`` initialisation) from the same
    triple. Distinct (expert, epoch) pairs get distinct seeds for epochs < 104 729.
    """
    s = (int(seed) * 1_000_003 + (int(expert) + 1) * 104_729 + (int(epoch) + 2) * 7_919 + 54_321) % (2**63 - 1)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def _digest(settings: dict[str, Any]) -> str:
    core = {k: v for k, v in settings.items() if k not in _PROVENANCE_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def _expert_path(root: Path, i: int) -> Path:
    return root / f"expert_{i:04d}.safetensors"


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{str(root)!r} is not an expert buffer (no {MANIFEST}); build one with "
                          f"`ddkit buffer DATASET --out {root}`") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"expert buffer manifest {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_V1):
        raise ArtifactError(f"{str(path)!r} is not a ddkit expert-buffer manifest (format {FORMAT} or {FORMAT_V1})")
    return data


def _read_expert(path: Path, digest: str, num_params: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The stored trajectory (e+1)×P and the file's header, hash-checked; refuses another buffer's file."""
    tensors, info = io.read(path, (EXPERT_FORMAT,), what="expert file")
    traj = tensors.get("trajectory")
    if info.get("digest") != digest:
        raise ConfigError(f"expert file {str(path)!r} belongs to a buffer with other settings; "
                          f"delete it or use another --out folder")
    if traj is None or traj.dim() != 2 or traj.shape[1] != num_params \
            or traj.shape[0] != int(info.get("epochs_done", -1)) + 1:
        shape = None if traj is None else tuple(traj.shape)
        raise ArtifactError(f"expert file {str(path)!r} has a trajectory of shape {shape}, "
                            f"expected (epochs_done+1)×{num_params}")
    return traj, info


def _write_expert(path: Path, traj: torch.Tensor, info: dict[str, Any]) -> None:
    io.write(path, {"trajectory": traj}, info, fmt=EXPERT_FORMAT)


def _train_one_epoch(net, x, y, cfg: TrainConfig, aug: DSA | None, g: torch.Generator) -> float:
    """One epoch of the shared training loop; returns its mean training loss."""
    losses: list[float] = []
    train_model(net, x, y, cfg, augment=aug, generator=g, on_epoch=lambda _epoch, loss: losses.append(loss))
    return losses[-1]


def train_experts(
    real: ImageDataset,
    out_dir: str | Path,
    *,
    experts: int = 10,
    epochs: int = 50,
    model: str = "convnet",
    lr: float = 0.01,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    dsa: bool = True,
    dsa_strategy: str = DEFAULT_STRATEGY,
    train_subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> ExpertBuffer:
    """Train ``experts`` networks on ``real`` and store their per-epoch parameters in ``out_dir``.

    Source: MTT ``buffer.py`` (Cazenavette et al. 2022); see the module docstring for the
    defaults, the file layout and resuming.

    Args:
        real: the real training set (uint8 N×C×H×W, int64 labels); standardised with its
            own mean/std before training.
        out_dir: buffer folder (created). Re-running with the same settings resumes; more
            ``experts`` than before extends the buffer.
        experts: number of expert trajectories E ≥ 1 (paper: 100; default 10).
        epochs: epochs per expert T ≥ 1 (50); each trajectory stores T + 1 parameter vectors.
        model: zoo network (``convnet`` = ConvNet-3, instance norm, as in MTT).
        lr: SGD learning rate > 0 (MTT's ``lr_teacher`` 0.01); momentum is 0, as in MTT.
        batch_size: real images per SGD step (256). weight_decay: L2 ≥ 0 (0).
        dsa, dsa_strategy: DSA augmentation of every real batch (on, full strategy).
        train_subset: images per class used for training (``None``: all, as in the paper);
            a class-balanced subset drawn with ``seed``.
        seed: seeds the subset, every initialisation and every epoch's draws.
        device: ``auto``, ``cpu``, ``cuda``. progress: show a progress bar over all epochs.

    Returns:
        The :class:`ExpertBuffer` reading ``out_dir``.

    Raises:
        ConfigError: a non-positive count/lr/batch size, negative weight decay, a
            ``train_subset`` larger than the smallest class, an unknown DSA op, or a buffer
            folder written with other settings. ModelError: unknown model / image size.
        OutputError: the folder cannot be written.
    """
    if experts < 1 or epochs < 1 or batch_size < 1:
        raise ConfigError(f"experts, epochs and batch_size must be ≥ 1, got {experts}, {epochs}, {batch_size}")
    if not lr > 0 or weight_decay < 0:
        raise ConfigError(f"expert lr must be > 0 and weight_decay ≥ 0, got {lr}, {weight_decay}")
    smallest = min(real.class_counts())
    if train_subset is not None and not 1 <= train_subset <= smallest:
        raise ConfigError(f"train_subset must be between 1 and the smallest class of {real.name} "
                          f"({smallest} images), got {train_subset}")
    dev = resolve_device(device)
    size = real.image_size[0]
    aug = DSA(DSAConfig(strategy=dsa_strategy), image_size=size) if dsa else None
    probe = get_model(model, real.channels, real.num_classes, size)
    names = [n for n, _ in probe.named_parameters()]
    shapes = [list(p.shape) for _, p in probe.named_parameters()]
    from ddkit import __version__

    settings: dict[str, Any] = {
        "format": FORMAT, "dataset": real.name, "channels": real.channels, "num_classes": real.num_classes,
        "image_size": size, "mean": list(real.mean), "std": list(real.std), "model": model, "lr": float(lr),
        "momentum": 0.0, "weight_decay": float(weight_decay), "batch_size": int(batch_size), "epochs": int(epochs),
        "augmentation": f"dsa:{dsa_strategy}" if dsa else "none", "train_subset": train_subset,
        "train_images": int(train_subset * real.num_classes) if train_subset else len(real), "seed": int(seed),
        "param_names": names, "param_shapes": shapes, "num_params": int(sum(p.numel() for p in probe.parameters())),
        "ddkit_version": __version__, "experts_requested": int(experts), "device": str(dev),
    }
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"buffer --out {str(root)!r} exists and is not a folder")
    check_writable(root / MANIFEST)
    digest = _digest(settings)
    if (root / MANIFEST).exists():
        old = _read_manifest(root)
        if _digest(old) != digest:
            diff = sorted(k for k in set(old) | set(settings)
                          if k not in _PROVENANCE_KEYS and old.get(k) != settings.get(k))
            shown = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff[:4])
            raise ConfigError(f"buffer {str(root)!r} was written with other settings ({shown}); "
                              f"use the same settings or another --out folder")
        settings["experts_requested"] = max(int(old.get("experts_requested", 0)), experts)
    with atomic_path(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))

    data = real.per_class_subset(train_subset, seed=seed) if train_subset else real
    x = data.normalize(data.float_images()).to(dev)
    y = data.labels.to(dev)
    cfg = TrainConfig(epochs=1, lr=lr, momentum=0.0, weight_decay=weight_decay, batch_size=batch_size)
    state: list[tuple[torch.Tensor | None, dict[str, Any] | None]] = []
    for i in range(experts):
        path = _expert_path(root, i)
        state.append(_read_expert(path, digest, settings["num_params"]) if path.exists() else (None, None))
    done = sum(min(epochs, info["epochs_done"]) for _, info in state if info is not None)
    with LoopProgress(f"buffer {real.name} {experts}×{epochs} ep", experts * epochs, done, enabled=progress) as bar:
        for i, (traj, info) in enumerate(state):
            if info is not None and info["epochs_done"] >= epochs:
                continue
            expert_generator(seed, i, -1)
            net = get_model(model, real.channels, real.num_classes, size).to(dev)
            if traj is None:
                rows = [parameters_to_vector(net.parameters()).detach().cpu()]
                info = {"expert": i, "epochs_done": 0, "train_loss": [], "digest": digest}
            else:
                rows = list(traj.unbind(0))
                vector_to_parameters(rows[-1].to(dev, copy=True), net.parameters())  # params become views: copy
            for epoch in range(info["epochs_done"], epochs):
                g = expert_generator(seed, i, epoch)
                loss = _train_one_epoch(net, x, y, cfg, aug, g)
                rows.append(parameters_to_vector(net.parameters()).detach().cpu())
                info = {**info, "epochs_done": epoch + 1, "train_loss": [*info["train_loss"], round(loss, 6)]}
                _write_expert(_expert_path(root, i), torch.stack(rows), info)
                bar.update(loss)
    return ExpertBuffer(root)


@dataclass
class _Expert:
    path: Path
    epochs_done: int


class ExpertBuffer:
    """Read access to a buffer folder written by :func:`train_experts`.

    Attributes:
        root: the folder. settings: the manifest (dict). epochs: T, epochs per expert.
        num_params: P, length of one flattened parameter vector.
        experts: the complete experts (``epochs_done == epochs``), in index order;
            partly trained ones are ignored until finished.

    Raises:
        ConfigError: the folder has no manifest (not a buffer).
        ArtifactError: the manifest or an expert file is unreadable or malformed.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"expert buffer {str(self.root)!r} is not a folder; build one with "
                              f"`ddkit buffer DATASET --out {self.root}`")
        self.settings = _read_manifest(self.root)
        try:
            self.epochs = int(self.settings["epochs"])
            self.num_params = int(self.settings["num_params"])
            self.model = str(self.settings["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"expert buffer manifest in {str(self.root)!r} lacks {exc}") from None
        self.digest = _digest(self.settings)
        self.experts: list[_Expert] = []
        legacy = self.settings.get("format") == FORMAT_V1
        for path in sorted(self.root.glob("expert_*.safetensors")):
            if legacy:
                try:
                    with safe_open(str(path), framework="pt") as f:
                        info = json.loads((f.metadata() or {})["ddkit"])
                        shape = list(f.get_slice("trajectory").get_shape())
                except Exception as exc:
                    raise ArtifactError(f"expert file {str(path)!r} cannot be read: {exc}") from None
            else:
                traj, info = _read_expert(path, self.digest, self.num_params)
                shape = list(traj.shape)
                del traj
            if info.get("digest") != self.digest:  # (checked by _read_expert for current buffers)
                raise ArtifactError(f"expert file {str(path)!r} was written with other settings than "
                                    f"{str(self.root / MANIFEST)!r}")
            if list(shape) != [int(info["epochs_done"]) + 1, self.num_params]:
                raise ArtifactError(f"expert file {str(path)!r} has a trajectory of shape {shape}")
            if int(info["epochs_done"]) >= self.epochs:
                self.experts.append(_Expert(path, int(info["epochs_done"])))

    def __len__(self) -> int:
        return len(self.experts)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Settings digest and number of complete experts (what a distillation depends on)."""
        return {"digest": self.digest, "experts": len(self.experts), "epochs": self.epochs}

    def params(self, expert: int, epoch: int) -> torch.Tensor:
        """Flattened parameters θ*_epoch of complete expert ``expert``: float32 (P,), CPU.

        Reads only that row of the file. Raises IndexError for an expert or epoch outside
        ``0..len(self)-1`` / ``0..epochs``.
        """
        if not 0 <= epoch <= self.epochs:
            raise IndexError(f"epoch {epoch} outside 0..{self.epochs}")
        with safe_open(str(self.experts[expert].path), framework="pt") as f:
            return f.get_slice("trajectory")[epoch:epoch + 1][0]

    def check_compatible(self, real: ImageDataset) -> None:
        """Raise :class:`ConfigError` unless the buffer was trained on ``real``'s dataset.

        Compares the dataset name, channels, image size, classes and normalisation, and
        that at least one expert is complete.
        """
        s = self.settings
        want = {"dataset": real.name, "channels": real.channels, "image_size": real.image_size[0],
                "num_classes": real.num_classes}
        bad = [f"{k} {s.get(k)!r} (buffer) vs {v!r}" for k, v in want.items() if s.get(k) != v]
        close = all(abs(float(a) - float(b)) < 1e-5 for a, b in zip(s.get("mean", []), real.mean, strict=False))
        close = close and all(abs(float(a) - float(b)) < 1e-5 for a, b in zip(s.get("std", []), real.std, strict=False))
        if not close:
            bad.append("normalisation mean/std")
        if bad:
            raise ConfigError(f"expert buffer {str(self.root)!r} does not match the real set: {'; '.join(bad)}")
        if not self.experts:
            raise ConfigError(f"expert buffer {str(self.root)!r} has no finished expert yet; finish it by "
                              f"re-running the same `ddkit buffer` command")
