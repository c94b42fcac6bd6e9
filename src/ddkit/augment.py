"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), geometry on kornia.

DSA draws one transform from the strategy ``color_crop_cutout_flip_scale_rotate`` and
applies it, with the *same* sampled parameters, to a real and a synthetic batch, so that
matching losses compare like with like. Every op is differentiable with respect to the
images. Parameters (the paper's and its reference code's):

==========  ================================================================
color       brightness ``x + b``, b ~ U(-0.5, 0.5); saturation
            ``(x - mean_c x)·s + mean_c x``, s ~ U(0, 2); contrast
            ``(x - mean x)·c + mean x``, c ~ U(0.5, 1.5) (all three, in order)
crop        integer translation by up to ``round(0.125·H)`` px in x and y, zero fill
cutout      one zeroed square of side ``round(0.5·H)`` at a random centre
flip        horizontal flip with probability 0.5
scale       x and y scaled independently by U(1/1.2, 1.2)
rotate      rotation by U(-15°, 15°)
==========  ================================================================

Images are standardised (mean/std) before augmentation, as in the reference code, so
"zero fill" is the dataset mean. Crop/flip/scale/rotate are one affine warp
(``kornia.geometry.transform.warp_affine``, bilinear, zero padding, aligned corners).

Parameters are drawn per *group*: a group is a set of samples that shares one op and one
parameter draw. DM and DC use one group per class (the reference code reseeds per class
so each class's real and synthetic batches share a draw); evaluation uses one group per
sample with one op for the whole batch (the reference's non-siamese mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.geometry.transform import warp_affine

from ddkit.errors import ConfigError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAConfig:
    """DSA hyper-parameters (defaults: the DSA paper's)."""

    strategy: str = DEFAULT_STRATEGY
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0


@dataclass
class DSADraw:
    """One draw of DSA parameters for ``G`` groups (all tensors have length G)."""

    op: torch.Tensor  # int64 index into OPS
    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    shift: torch.Tensor  # G×2 integer pixels (x, y)
    cut_centre: torch.Tensor  # G×2 integer pixels (x, y)
    flip: torch.Tensor  # bool
    scale: torch.Tensor  # G×2
    angle: torch.Tensor  # degrees


class DSA:
    """Siamese differentiable augmentation.

    Args:
        config: a :class:`DSAConfig` (strategy and ranges).
        image_size: H = W of the images it will be applied to (sets crop/cutout sizes).

    Raises:
        ConfigError: the strategy names an unknown op.
    """

    def __init__(self, config: DSAConfig | None = None, image_size: int = 32):
        self.config = config or DSAConfig()
        names = [s for s in self.config.strategy.split("_") if s]
        bad = [s for s in names if s not in OPS]
        if bad or not names:
            raise ConfigError(f"unknown DSA op(s) {bad or names}; choose from {', '.join(OPS)}")
        self.ops = torch.tensor([OPS.index(s) for s in names])
        self.size = image_size

    def draw(self, groups: int, generator: torch.Generator | None = None, one_op: bool = False) -> DSADraw:
        """Sample one op and its parameters per group (``one_op``: the same op for all)."""
        g, cfg, n = generator, self.config, groups

        def u(*shape):
            return torch.rand(*shape, generator=g)

        pick = torch.randint(len(self.ops), (1 if one_op else n,), generator=g).expand(n)
        shift_max = int(self.size * cfg.crop + 0.5)
        cut = int(self.size * cfg.cutout + 0.5)
        return DSADraw(
            op=self.ops[pick],
            brightness=(u(n) - 0.5) * cfg.brightness,
            saturation=u(n) * cfg.saturation,
            contrast=u(n) + cfg.contrast,
            shift=torch.randint(-shift_max, shift_max + 1, (n, 2), generator=g),
            cut_centre=torch.randint(0, self.size + (1 - cut % 2), (n, 2), generator=g),
            flip=u(n) < 0.5,
            scale=u(n, 2) * (cfg.scale - 1.0 / cfg.scale) + 1.0 / cfg.scale,
            angle=(u(n) - 0.5) * 2 * cfg.rotate,
        )

    def apply(self, x: torch.Tensor, draw: DSADraw, group: torch.Tensor) -> torch.Tensor:
        """Apply ``draw`` to ``x`` (N×C×H×W float), sample i using group ``group[i]``.

        Differentiable with respect to ``x``. Returns a new N×C×H×W tensor.
        """
        dev = x.device
        group = group.to(dev)
        op = draw.op.to(dev)[group]
        out = x
        colour = torch.nonzero(op == OPS.index("color")).flatten()
        if colour.numel():
            gi = group[colour]
            xc = x[colour]
            b = draw.brightness.to(dev, x.dtype)[gi].view(-1, 1, 1, 1)
            s = draw.saturation.to(dev, x.dtype)[gi].view(-1, 1, 1, 1)
            c = draw.contrast.to(dev, x.dtype)[gi].view(-1, 1, 1, 1)
            xc = xc + b
            m = xc.mean(dim=1, keepdim=True)
            xc = (xc - m) * s + m
            m = xc.mean(dim=(1, 2, 3), keepdim=True)
            xc = (xc - m) * c + m
            out = out.index_put((colour,), xc)
        cutout = torch.nonzero(op == OPS.index("cutout")).flatten()
        if cutout.numel():
            gi = group[cutout]
            cut = int(self.size * self.config.cutout + 0.5)
            lo = draw.cut_centre.to(dev)[gi] - cut // 2  # n×2 (x, y) top-left corner
            r = torch.arange(x.shape[-1], device=dev)
            in_x = (r >= lo[:, :1]) & (r < lo[:, :1] + cut)  # n×W
            in_y = (r >= lo[:, 1:]) & (r < lo[:, 1:] + cut)  # n×H
            keep = ~(in_y[:, :, None] & in_x[:, None, :])
            out = out.index_put((cutout,), x[cutout] * keep[:, None].to(x.dtype))
        geo_ops = torch.tensor([OPS.index(k) for k in ("crop", "flip", "scale", "rotate")], device=dev)
        geo = torch.nonzero(torch.isin(op, geo_ops)).flatten()
        if geo.numel():
            m = self._matrices(draw, op[geo], group[geo], x.shape[-1]).to(dev, x.dtype)
            warped = warp_affine(x[geo], m, dsize=(x.shape[-2], x.shape[-1]), mode="bilinear",
                                 padding_mode="zeros", align_corners=True)
            out = out.index_put((geo,), warped)
        return out

    @staticmethod
    def _matrices(draw: DSADraw, op: torch.Tensor, group: torch.Tensor, size: int) -> torch.Tensor:
        """Per-sample 2×3 pixel-space matrices mapping source to output coordinates."""
        op, group = op.cpu(), group.cpu()
        n = op.numel()
        c = (size - 1) / 2.0
        m = torch.zeros(n, 2, 3)
        m[:, 0, 0] = 1.0
        m[:, 1, 1] = 1.0
        # crop: output(p) = input(p + t)  =>  maps source q to q - t
        sel = op == OPS.index("crop")
        t = draw.shift[group[sel]].float()
        m[sel, 0, 2] = -t[:, 0]
        m[sel, 1, 2] = -t[:, 1]
        sel = (op == OPS.index("flip")) & draw.flip[group]
        m[sel, 0, 0] = -1.0
        m[sel, 0, 2] = size - 1.0
        # scale: output(p) = input(c + s (p - c))  =>  source q maps to c + (q - c) / s
        sel = op == OPS.index("scale")
        s = draw.scale[group[sel]]
        m[sel, 0, 0] = 1.0 / s[:, 0]
        m[sel, 1, 1] = 1.0 / s[:, 1]
        m[sel, 0, 2] = c - c / s[:, 0]
        m[sel, 1, 2] = c - c / s[:, 1]
        # rotate: output(p) = input(c + R(θ)(p - c)), R = [[cos, sin], [-sin, cos]]
        # =>  source q maps to c + R(θ)^T (q - c)
        sel = op == OPS.index("rotate")
        a = draw.angle[group[sel]] * math.pi / 180.0
        cos, sin = torch.cos(a), torch.sin(a)
        m[sel, 0, 0], m[sel, 0, 1] = cos, -sin
        m[sel, 1, 0], m[sel, 1, 1] = sin, cos
        m[sel, 0, 2] = c - cos * c + sin * c
        m[sel, 1, 2] = c - sin * c - cos * c
        return m

    def siamese(self, *batches: tuple[torch.Tensor, torch.Tensor], groups: int,
                generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Augment several (images, group) pairs with one shared draw for ``groups`` groups.

        Each pair is (N_i×C×H×W float images, (N_i,) int64 group ids in ``0..groups-1``);
        samples of the same group in different batches get identical parameters.
        """
        d = self.draw(groups, generator)
        return [self.apply(x, d, gid) for x, gid in batches]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Non-siamese use (training): one op for the batch, parameters drawn per sample."""
        d = self.draw(x.shape[0], generator, one_op=True)
        return self.apply(x, d, torch.arange(x.shape[0]))
