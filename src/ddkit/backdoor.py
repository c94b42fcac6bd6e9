"""Backdoor attacks on distilled sets, and how to measure them (``ddkit attack``).

Sources (``../shared/papers/backdoor.md``, read from the authors' codes):

* **Dark Distillation** (Yang et al., arXiv 2502.04229; code Zi-YuanYang/Poisoned_DD):
  poisons a *finished* distilled set without any raw data (:func:`dark`).
* **NAIVEATTACK** (Liu et al., NDSS 2023; code liuyugeng/baadd): distil from raw data of
  which a share carries the trigger and the target label (:func:`naive_poison`, then any
  method).
* **DOORPING** (the same paper): as NAIVEATTACK, but the trigger is optimised during the
  distillation, after every iteration, through the distillation loop's per-step hook
  (:class:`Doorping`), and the poisoned real images are restamped with it.

Metrics (:func:`measure`): victims trained from scratch on a set with the evaluation
protocol (:func:`ddkit.evaluate.train_networks`); **CTA** = clean test accuracy; **ASR** =
share of triggered test images of the *non-target* classes classified as the target; the
authors' codes count triggered test images of *all* classes, target included: reported
beside it as ``asr_all_classes``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddkit.artifact import DistilledSet, pixel_overflow
from ddkit.data import ImageDataset
from ddkit.errors import ConfigError
from ddkit.models import get_model
from ddkit.train import TrainConfig, train_model
from ddkit.utils import iteration_generator

__all__ = ["Doorping", "Trigger", "dark", "measure", "naive_poison", "stored_trigger"]


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger stamped on pixel-space images (N×C×H×W float, [0, 1] for real images).

    ``kind="patch"``: a ``size``×``size`` square at the bottom-right corner, ``inset`` pixels
    inside it (baadd: size 2, inset 1, white), set to ``value`` (pixel units) or, when
    ``value_sd`` is given, to ``mean + value_sd·std`` of the dataset (the Poisoned_DD code's
    1-pixel patch of 10 in standardised units). ``kind="blend"``: ``(1 − alpha)·x + alpha·P``
    with a fixed random pattern P in [0, 1] drawn from ``seed``.
    """

    kind: str = "patch"
    size: int = 2
    inset: int = 1
    value: float = 1.0
    value_sd: float | None = None
    alpha: float = 0.1
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Trigger:
        """``"patch"``, ``"patch:size=1,inset=0,value_sd=10"``, ``"blend:alpha=0.2,seed=3"``.

        Raises:
            ConfigError: unknown kind or key, or a value that is not a number.
        """
        kind, _, rest = str(spec).strip().partition(":")
        if kind not in ("patch", "blend"):
            raise ConfigError(f"unknown trigger {kind!r}; use patch or blend (e.g. patch:size=2,inset=1,value=1)")
        args: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, _, raw = item.partition("=")
            if key not in ("size", "inset", "value", "value_sd", "alpha", "seed"):
                raise ConfigError(f"unknown trigger setting {key!r} in {spec!r}")
            try:
                args[key] = int(raw) if key in ("size", "inset", "seed") else float(raw)
            except ValueError:
                raise ConfigError(f"trigger setting {key}={raw!r} is not a number") from None
        return cls(kind=kind, **args)

    def check(self, channels: int, size: int) -> None:
        """Raise :class:`ConfigError` unless the trigger fits C×size×size images."""
        if self.kind == "patch":
            if self.size < 1 or self.inset < 0 or self.size + self.inset > size:
                raise ConfigError(f"a {self.size}-pixel patch {self.inset} pixel(s) inside the corner does not fit "
                                  f"{size}×{size} images")
            if not math.isfinite(self.value) or (self.value_sd is not None and not math.isfinite(self.value_sd)):
                raise ConfigError("the trigger value must be finite")
        elif not 0 < self.alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {self.alpha}")

    def apply(self, x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
        """Stamp the trigger on pixel-space images ``x`` (N×C×H×W float); returns a new tensor."""
        c, h = x.shape[1], x.shape[-1]
        self.check(c, h)
        out = x.clone()
        if self.kind == "patch":
            lo, hi = h - self.inset - self.size, h - self.inset
            if self.value_sd is None:
                val = torch.full((c, 1, 1), float(self.value))
            else:
                val = (torch.tensor(mean) + self.value_sd * torch.tensor(std)).view(c, 1, 1)
            out[:, :, lo:hi, lo:hi] = val.to(out)
            return out
        g = torch.Generator().manual_seed(self.seed)
        pattern = torch.rand((c, h, h), generator=g).to(out)
        return (1 - self.alpha) * out + self.alpha * pattern

    def spec(self) -> str:
        """The trigger as a string :meth:`parse` reads back."""
        if self.kind == "blend":
            return f"blend:alpha={self.alpha:g},seed={self.seed}"
        v = f"value_sd={self.value_sd:g}" if self.value_sd is not None else f"value={self.value:g}"
        return f"patch:size={self.size},inset={self.inset},{v}"


DARK_TRIGGER = Trigger(kind="patch", size=1, inset=0, value_sd=10.0)  # the Poisoned_DD code's


def _check_target(target: int, k: int) -> None:
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < k:
        raise ConfigError(f"the target label must be a class index in 0..{k - 1}, got {target!r}")


def _flat_grad(net: torch.nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
    params = [p for p in net.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def _cos_distance(a: Tensor, b: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(a, b, dim=0, eps=1e-8)


def dark(ds: DistilledSet, target: int = 0, *, trigger: Trigger = DARK_TRIGGER, alpha: float = 0.6,
         surrogate_steps: int = 100, archetype_steps: int = 200, trajectory: int = 10, updates: int = 101,
         batch_size: int = 256, lr: float = 0.1, model: str = "convnet", seed: int = 0,
         device: str | torch.device = "cpu", progress: bool = False) -> DistilledSet:
    """Dark Distillation: backdoor a finished distilled set without raw data (Poisoned_DD code).

    1. surrogate ``model`` trained on the set: ``surrogate_steps`` full-batch SGD steps (lr
       0.01, momentum 0.9, wd 5e-4; the shared loop);
    2. one archetype per class: from N(0, I) in standardised units, Adam lr 0.1 for
       ``archetype_steps`` steps minimising −logit_c of the surrogate;
    3. the archetypes carry ``trigger`` (default: the code's 1-pixel patch of 10 standardised
       units in the bottom-right corner) and the label ``target``;
    4. S′ = S, Adam (``lr``) on the images, labels unchanged: for i = 0..``trajectory``, for
       each ``batch_size`` batch of S, a fresh network trained i full-batch steps on the clean
       batch (a point of the benign trajectory), then ``updates`` steps with it frozen on
       ``(1 − α)·D(∇ℓ(S′_b), ∇ℓ(S_b)) + α·D(∇ℓ(S′_b), ∇ℓ(Ã, t))``, D = 1 − cosine of the
       concatenated parameter gradients.

    Args:
        ds: a hard-label distilled set. target: the backdoor's class. alpha: α (0.6).
        device, seed, progress: as elsewhere (same seed ⇒ same poisoned set).

    Returns:
        The poisoned set: its images (pixel space, unclipped like every distilled set; the
        fraction outside [0, 1] is recorded) with the original labels and provenance; ``extra["backdoor"]``
        records the attack, target, trigger, settings and ``seconds`` (wall clock).

    Raises:
        ConfigError: a target out of range, a trigger that does not fit, soft labels, or
            counts out of range.
    """
    from ddkit.progress import LoopProgress
    from ddkit.utils import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    k, c, size = ds.num_classes, ds.images.shape[1], ds.images.shape[-1]
    _check_target(target, k)
    trigger.check(c, size)
    if ds.label_kind != "hard":
        raise ConfigError(f"the dark attack needs a hard-label set, this one has {ds.label_kind} labels")
    if min(surrogate_steps, archetype_steps, trajectory, updates) < 0 or batch_size < 1 or not 0 <= alpha <= 1:
        raise ConfigError("dark: step counts must be ≥ 0, batch_size ≥ 1 and alpha in [0, 1]")
    mean = torch.tensor(ds.mean, device=dev).view(-1, 1, 1)
    std = torch.tensor(ds.std, device=dev).view(-1, 1, 1)
    x = ds.normalized_images().to(dev)
    y = ds.labels.to(dev)
    n = x.shape[0]
    # 1. surrogate
    g = iteration_generator(seed, -1)
    surrogate = get_model(model, c, k, size).to(dev)
    train_model(surrogate, x, y, TrainConfig(epochs=surrogate_steps, batch_size=n, schedule="constant"), generator=g)
    surrogate.eval()
    for p in surrogate.parameters():
        p.requires_grad_(False)
    # 2. archetypes by model inversion
    arche = torch.randn((k, c, size, size), generator=g).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([arche], lr=0.1)
    classes = torch.arange(k, device=dev)
    for _ in range(archetype_steps):
        loss = -surrogate(arche)[classes, classes].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # 3. triggered archetypes (the trigger is stamped in pixel space)
    a_trig = (trigger.apply(arche.detach() * std + mean, ds.mean, ds.std) - mean) / std
    y_trig = torch.full((k,), target, device=dev, dtype=torch.long)
    # 4. hybrid gradient matching along benign trajectories
    poisoned = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([poisoned], lr=lr)
    batches = [torch.arange(s, min(s + batch_size, n), device=dev) for s in range(0, n, batch_size)]
    last = float("nan")
    with LoopProgress("dark attack", (trajectory + 1) * len(batches) * updates, enabled=progress) as bar:
        for i in range(trajectory + 1):
            for b, idx in enumerate(batches):
                gi = iteration_generator(seed, i * len(batches) + b)
                net = get_model(model, c, k, size).to(dev)
                if i > 0:
                    train_model(net, x[idx], y[idx], TrainConfig(epochs=i, batch_size=len(idx), schedule="constant"),
                                generator=gi)
                net.train()
                g_clean = _flat_grad(net, x[idx], y[idx], create_graph=False).detach()
                g_back = _flat_grad(net, a_trig, y_trig, create_graph=False).detach()
                for _ in range(updates):
                    g_syn = _flat_grad(net, poisoned[idx], y[idx], create_graph=True)
                    loss = (1 - alpha) * _cos_distance(g_syn, g_clean) + alpha * _cos_distance(g_syn, g_back)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    last = float(loss.detach())
                    bar.update(last)
    pix = poisoned.detach() * std + mean
    seconds = round(time.perf_counter() - t0, 2)
    info = {"attack": "dark", "target": target, "trigger": trigger.spec(), "alpha": alpha,
            "surrogate_steps": surrogate_steps, "archetype_steps": archetype_steps, "trajectory": trajectory,
            "updates": updates, "batch_size": batch_size, "lr": lr, "model": model, "seed": seed, "seconds": seconds,
            "final_loss": last, "pixel_overflow": pixel_overflow(pix, 6), "source_digest": None}
    return DistilledSet(images=pix.cpu(), labels=ds.labels, method=ds.method, dataset=ds.dataset,
                        mean=ds.mean, std=ds.std, class_names=list(ds.class_names), ipc=ds.ipc, seed=ds.seed,
                        config=ds.config, extra={**ds.extra, "backdoor": info}, lr=ds.lr, label_kind=ds.label_kind)


def naive_poison(real: ImageDataset, target: int, *, trigger: Trigger = Trigger(), share: float = 0.01,
                 seed: int = 0) -> tuple[ImageDataset, Tensor]:
    """NAIVEATTACK's poisoned training set: ``share`` of the images (drawn with ``seed`` from the
    whole set, as baadd does) carry ``trigger`` and are relabelled ``target``.

    Returns:
        (the poisoned copy of ``real``: uint8 images, labels; the poisoned indices, int64).

    Raises:
        ConfigError: a target out of range, a share outside (0, 1], or a trigger that does not fit.
    """
    _check_target(target, real.num_classes)
    if not 0 < share <= 1:
        raise ConfigError(f"the poisoned share must be in (0, 1], got {share}")
    trigger.check(real.channels, real.image_size[0])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(real), generator=g)[:max(1, round(share * len(real)))]
    images, labels = real.images.clone(), real.labels.clone()
    stamped = trigger.apply(real.float_images(idx), real.mean, real.std).clamp(0, 1)
    images[idx] = (stamped * 255).round().to(torch.uint8)
    labels[idx] = target
    # the per-class index cache of ``real`` is stale once labels change: start without it
    out = dataclasses.replace(real, images=images, labels=labels, _by_class=None)
    return out, idx


class Doorping:
    """DOORPING's trigger update, as a per-step hook of the distillation loop (baadd code).

    After every iteration, with the iteration's network (exposed by DM, DC and DSA as
    ``state.aux["net"]``, frozen and in eval mode here): pick the neuron j of its penultimate
    features (the input of its ``classifier``, chosen explicitly: the authors' "second-last
    weight tensor" rule lands on a norm weight for the instance-norm ConvNet) with the
    largest Σ_k |W_kj| (``neuron="active"``, the default, a deviation: among the units
    active on the current trigger image; baadd's rule was written for a 192-unit FC layer,
    while ConvNet's penultimate features are spatial and the top unit is often 0 on the
    black trigger image, which makes the MSE target 0 and the update a no-op; ``"all"`` is
    the code's rule); optimise the *trigger image* (the patch on a black background,
    standardised, as baadd's ``update_trigger`` feeds ``args.init_trigger``: one image, not
    the poisoned ones), its gradient masked to the patch, with Adam (lr 0.08, betas (0.9,
    0.99), at most ``steps`` steps, stopped when the loss falls below 0.5), so that feature j
    reaches ``alpha`` (10) times its value before the update (MSE); then restamp the
    poisoned real images the loop samples from (``context.real_x()``, in place). The
    pattern starts as uniform values in [1/255, 1] inside the patch (the code's 1–255). As
    in the code its values are not clipped, so the optimised patch may leave [0, 1]:
    ``clamp=True`` (a deviation) keeps it a valid pixel patch. It lives, standardised, in
    ``state.tensors["trigger"]``, so checkpoints hold it and a resumed run continues with it.

    Args:
        shape: the images' C×H×W (square).
        indices: the poisoned real images' indices in the real set (int64, P).
        trigger: the patch (its size and place give the mask).
        mean, std: the dataset's standardisation.
        steps, lr, alpha, stop: the update's budget and target (baadd: 1000, 0.08, 10, 0.5).
        clamp: clip the pattern to [0, 1] after each step (not in baadd).
        neuron: ``"active"`` or ``"all"``: the units j is chosen among (see above).

    Attributes:
        pattern: the latest trigger image in pixel space, 1×C×H×W float on the CPU (zero
            outside the mask), or None before the first update.
        updates: one dict per update: iteration, neuron (-1 when no unit was active: the
            update skipped), final loss, steps taken (forward passes).

    Raises:
        ConfigError: a trigger that is not a patch or does not fit the images; steps < 1;
            an unknown neuron rule.
    """

    def __init__(self, shape: tuple[int, int, int], indices: Tensor, trigger: Trigger, mean: tuple[float, ...],
                 std: tuple[float, ...], *, steps: int = 1000, lr: float = 0.08, alpha: float = 10.0,
                 stop: float = 0.5, clamp: bool = False, neuron: str = "active", seed: int = 0):
        if neuron not in ("active", "all"):
            raise ConfigError(f"DOORPING's neuron rule is 'active' or 'all', not {neuron!r}")
        if trigger.kind != "patch":
            raise ConfigError("DOORPING optimises a patch trigger (kind patch)")
        if steps < 1:
            raise ConfigError(f"DOORPING needs at least one trigger step per update, got {steps}")
        c, h = shape[0], shape[-1]
        trigger.check(c, h)
        self.indices, self.mean, self.std = indices, mean, std
        lo, hi = h - trigger.inset - trigger.size, h - trigger.inset
        self.mask = torch.zeros((1, 1, h, h))
        self.mask[..., lo:hi, lo:hi] = 1
        g = torch.Generator().manual_seed(seed)
        self.initial = (torch.randint(1, 256, (1, c, h, h), generator=g).float() / 255) * self.mask
        self.steps, self.lr, self.alpha, self.stop, self.clamp = steps, lr, alpha, stop, clamp
        self.neuron = neuron
        self.updates: list[dict[str, float]] = []
        self.pattern: Tensor | None = None

    def _stats(self, device) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return mean, std

    def __call__(self, event) -> None:
        net = event.state.aux.get("net")
        if net is None or not hasattr(net, "classifier"):
            raise ConfigError("DOORPING needs a method that exposes its network to the hook (dm, dc, dsa)")
        dev = next(net.parameters()).device
        mean, std = self._stats(dev)
        mask = self.mask.to(dev)
        trig = event.state.tensors.get("trigger")  # the standardised trigger image
        if trig is None:
            trig = (self.initial.to(dev) - mean) / std
        trig = trig.detach().clone().requires_grad_(True)
        was = [p.requires_grad for p in net.parameters()]
        mode = net.training
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        score = net.classifier.weight.detach().abs().sum(0)
        if self.neuron == "active":
            with torch.no_grad():
                live = net.embed(trig)[0] > 0
            score = score.masked_fill(~live, -math.inf) if bool(live.any()) else None
        j = -1 if score is None else int(score.argmax())
        opt = torch.optim.Adam([trig], lr=self.lr, betas=(0.9, 0.99))
        goal, loss_val, taken = None, float("nan"), 0
        try:
            for _ in range(self.steps if j >= 0 else 0):
                taken += 1
                act = net.embed(trig)[:, j]
                if goal is None:
                    goal = self.alpha * act.detach()
                loss = F.mse_loss(act, goal)
                loss_val = float(loss.detach())
                if loss_val < self.stop:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                trig.grad *= mask
                opt.step()
                if self.clamp:
                    with torch.no_grad():
                        trig.copy_(((trig * std + mean).clamp(0, 1) * mask - mean) / std)
        finally:
            for p, w in zip(net.parameters(), was, strict=True):
                p.requires_grad_(w)
            net.train(mode)
        trig = trig.detach()
        event.state.tensors["trigger"] = trig
        self.pattern = ((trig * std + mean) * mask).cpu()
        real_x = event.context.real_x()
        with torch.no_grad():
            idx = self.indices.to(real_x.device)
            m = mask.to(real_x.device)
            real_x[idx] = (real_x[idx] * (1 - m) + trig.to(real_x) * m)
        self.updates.append({"iteration": event.iteration, "neuron": j, "loss": loss_val, "steps": taken})


@dataclass
class AttackMetrics:
    """CTA and ASR (in [0, 1]) per victim architecture, mean ± std over the runs."""

    target: int
    trigger: str
    victims: list[dict[str, Any]]
    runs: int
    epochs: int
    seconds: float
    augment: bool = True

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self), indent=2)


def stored_trigger(ds: DistilledSet) -> tuple[Tensor, Tensor] | None:
    """The optimised trigger a DOORPING set carries: (pattern, mask), each C×H×W float in
    pixel space (the pattern may leave [0, 1]; the mask is 1 on the patch, 0 elsewhere), or
    None for a set that stores none."""
    if "trigger" in ds.tensors and "trigger_mask" in ds.tensors:
        return ds.tensors["trigger"], ds.tensors["trigger_mask"]
    return None


def measure(ds: DistilledSet | str | Path, target: int, *, trigger: Trigger | None = None,
            victims: tuple[str, ...] = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18"), runs: int = 2,
            epochs: int | None = None, augment: bool = True, seed: int = 0, device: str | torch.device = "auto",
            test: ImageDataset | None = None, data_root: str | Path | None = None,
            download: bool = False, trigger_from: DistilledSet | str | Path | None = None) -> AttackMetrics:
    """CTA and ASR of networks trained on a set (victims trained with the evaluation protocol).

    ``trigger`` defaults to the one the set carries (DOORPING's optimised pattern in its
    ``trigger``/``trigger_mask`` tensors, or the spec in ``extra["backdoor"]``), else the
    baadd patch. ``trigger_from``: take the stored pattern of another set (a DOORPING set),
    so that a clean set is measured under the poisoned set's optimised trigger. ASR:
    triggered test images of the non-target classes classified as ``target``;
    ``asr_all_classes``: the authors' codes' count over all test images.
    ``augment``: train the victims with DSA augmentation (the ``hard`` protocol's); the
    Poisoned_DD code trains its victims without augmentation (Fashion-MNIST/CIFAR: strategy
    ``none``) for 50–100 epochs, and DSA's flips and crops move a corner patch.

    Raises:
        ConfigError, ArtifactError, ModelError: bad target, trigger, victims (none, or an
            unknown name) or file; ``trigger_from`` with ``trigger``, or a ``trigger_from`` set
            that stores no pattern or one of another image shape.
    """
    from ddkit.data import load_dataset
    from ddkit.evaluate import train_networks
    from ddkit.train import predict

    t0 = time.perf_counter()
    ds = ds if isinstance(ds, DistilledSet) else DistilledSet.load(ds)
    _check_target(target, ds.num_classes)
    if not victims:
        raise ConfigError("give at least one victim architecture (e.g. convnet,mlp)")
    pattern = None
    if trigger_from is not None:
        if trigger is not None:
            raise ConfigError("give a trigger spec or a set to take the trigger from, not both")
        name = Path(trigger_from).name if isinstance(trigger_from, str | Path) else "the given set"
        src = trigger_from if isinstance(trigger_from, DistilledSet) else DistilledSet.load(trigger_from)
        stored = stored_trigger(src)
        if stored is None:
            raise ConfigError(f"{name} stores no trigger pattern (only DOORPING sets do)")
        pattern, mask = stored
        if tuple(pattern.shape) != tuple(ds.images.shape[1:]):
            raise ConfigError(f"the trigger of {name} is {tuple(pattern.shape)}, "
                              f"the set's images {tuple(ds.images.shape[1:])}")
        spec = f"pattern stored in {name} (DOORPING)"
    elif trigger is None and (own := stored_trigger(ds)) is not None:
        pattern, mask = own
        spec = "pattern stored in the set (DOORPING)"
    else:
        if trigger is None:
            rec = ds.extra.get("backdoor") if isinstance(ds.extra.get("backdoor"), dict) else {}
            trigger = Trigger.parse(rec["trigger"]) if rec.get("trigger") else Trigger()
        trigger.check(ds.images.shape[1], ds.images.shape[-1])
        spec = trigger.spec()
    test = test if test is not None else load_dataset(ds.dataset, "test", data_root=data_root, download=download)
    clean = test.float_images()
    if pattern is not None:
        triggered = clean * (1 - mask) + pattern * mask
    else:
        triggered = trigger.apply(clean, ds.mean, ds.std)
    keep = test.labels != target
    rows = []
    for name in victims:
        trained = train_networks(ds, model=name, runs=runs, epochs=epochs, augment=augment, seed=seed, device=device,
                                 protocol="hard")
        cta, asr, asr_all = [], [], []
        for net in trained.networks:
            p_clean = predict(net, clean, trained.normalize)
            p_trig = predict(net, triggered, trained.normalize)
            cta.append(float((p_clean == test.labels).float().mean()))
            asr.append(float((p_trig[keep] == target).float().mean()))
            asr_all.append(float((p_trig == target).float().mean()))
        rows.append({"model": name, "cta": statistics.fmean(cta), "cta_std": statistics.pstdev(cta),
                     "asr": statistics.fmean(asr), "asr_std": statistics.pstdev(asr),
                     "asr_all_classes": statistics.fmean(asr_all), "runs_cta": cta, "runs_asr": asr,
                     "protocol": trained.protocol})
    return AttackMetrics(target, spec, rows, runs, trained.epochs, round(time.perf_counter() - t0, 2), augment)

