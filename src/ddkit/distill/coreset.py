"""Coreset baselines: ``random`` and ``herding`` (real images, no synthesis).

Random: IPC real images per class drawn uniformly. Herding (Welling, ICML 2009; used as a
baseline by DC, Zhao et al. ICLR 2021): per class, greedily add the image whose inclusion
brings the running mean of the selected features closest to the class-mean feature; the
features are the penultimate layer of a ConvNet trained on the real training set with the
shared training loop.
"""

from __future__ import annotations

import torch
from pydantic import NonNegativeInt

from ddkit.distill.base import Distiller, LoopState, MethodConfig, RunContext, SetParts, register, sample_per_class
from ddkit.train import TrainConfig, train_model
from ddkit.utils import set_seed


class _Selection(Distiller):
    """A coreset method: ``select`` picks real images; no loop, no checkpoints."""

    iterative = False

    def select(self, ctx: RunContext) -> torch.Tensor:
        """int64 indices into the real set, class-major, IPC per class."""
        raise NotImplementedError

    def init_state(self, ctx: RunContext) -> LoopState:
        return LoopState(tensors={"indices": self.select(ctx)})

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        idx = state.tensors["indices"]
        return SetParts(ctx.real.float_images(idx), ctx.real.labels[idx], "hard",
                        extra={"source_indices": idx.tolist()}, pixel=True)


@register
class RandomDistiller(_Selection):
    """IPC real images per class, uniformly at random (seeded)."""

    name = "random"

    def select(self, ctx: RunContext) -> torch.Tensor:
        return sample_per_class(ctx.real.class_indices(), ctx.ipc, set_seed(ctx.seed))


class HerdingConfig(MethodConfig):
    """Herding settings. ``feature_epochs``/``feature_per_class`` set how the feature
    ConvNet is trained (the papers do not state a budget; deviation flags, not defaults
    from a paper)."""

    model: str = "convnet"
    feature_epochs: NonNegativeInt = 2
    feature_per_class: NonNegativeInt = 0  # 0: the whole training set


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding: indices (int64, length k) of rows of ``features`` (n×d float).

    At step t picks the unselected row i minimising ‖μ − (Σ_selected + f_i)/t‖₂ with μ the
    mean of all rows (Welling 2009; the DC paper's coreset baseline).
    """
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    for t in range(1, k + 1):
        dist = ((mu - (running + features) / t) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return torch.tensor(chosen, dtype=torch.long)


@register
class HerdingDistiller(_Selection):
    """Herding selection on features of a ConvNet trained on the real data."""

    name = "herding"
    Config = HerdingConfig

    def select(self, ctx: RunContext) -> torch.Tensor:
        cfg, real, device = ctx.config, ctx.real, ctx.device
        g = set_seed(ctx.seed)
        train = real.per_class_subset(cfg.feature_per_class, ctx.seed) if cfg.feature_per_class else real
        net = ctx.new_model(cfg.model)
        x = real.normalize(train.float_images()).to(device)
        train_model(net, x, train.labels.to(device), TrainConfig(epochs=cfg.feature_epochs), generator=g)
        net.eval()
        picks = []
        with torch.no_grad():
            for ix in real.class_indices():
                feats = torch.cat([net.embed(real.normalize(real.float_images(ix[s:s + 1000])).to(device))
                                   for s in range(0, ix.numel(), 1000)])
                picks.append(ix[herding_select(feats.double(), ctx.ipc).cpu()])
        return torch.cat(picks)
