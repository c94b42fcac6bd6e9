import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import DSA, OPS
from ddkit.errors import ConfigError


def _draw_with(dsa, ops):
    d = dsa.draw(len(ops), torch.Generator().manual_seed(0))
    d.op[:] = torch.tensor([OPS.index(o) for o in ops])
    return d


def _affine_ref(x, theta):
    grid = F.affine_grid(theta[None], (1, *x.shape), align_corners=True)
    return F.grid_sample(x[None], grid, align_corners=True)[0]


def test_geometric_ops_match_dsa_reference_formulas():
    dsa = DSA(image_size=28)
    x = torch.randn(4, 1, 28, 28)
    d = _draw_with(dsa, ["crop", "flip", "scale", "rotate"])
    d.flip[:] = True
    d.shift[0] = torch.tensor([2, -3])
    y = dsa.apply(x, d, torch.arange(4))
    torch.testing.assert_close(y[1], x[1].flip(-1), atol=1e-4, rtol=0)
    shifted = torch.zeros_like(x[0])
    shifted[:, 3:, :26] = x[0, :, :25, 2:]  # output(p) = input(p + t), zero fill
    torch.testing.assert_close(y[0], shifted, atol=1e-4, rtol=0)
    sx, sy = d.scale[2].tolist()
    torch.testing.assert_close(y[2], _affine_ref(x[2], torch.tensor([[sx, 0, 0], [0, sy, 0.0]])), atol=1e-4, rtol=0)
    a = float(d.angle[3]) * math.pi / 180
    rot = torch.tensor([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0]])
    torch.testing.assert_close(y[3], _affine_ref(x[3], rot), atol=1e-4, rtol=0)


def test_colour_and_cutout():
    dsa = DSA(image_size=32)
    x = torch.rand(2, 3, 32, 32)
    d = _draw_with(dsa, ["color", "cutout"])
    y = dsa.apply(x, d, torch.arange(2))
    b, s, c = d.brightness[0], d.saturation[0], d.contrast[0]
    ref = x[0] + b
    m = ref.mean(0, keepdim=True)
    ref = (ref - m) * s + m
    ref = (ref - ref.mean()) * c + ref.mean()
    torch.testing.assert_close(y[0], ref)
    zeros = (y[1] == 0).all(0).sum().item()
    assert 0 < zeros <= 16 * 16 and torch.equal(y[1][y[1] != 0], x[1][y[1] != 0])


def test_siamese_shares_parameters_per_group_and_is_differentiable():
    dsa = DSA(image_size=28)
    base = torch.randn(3, 1, 28, 28)
    real = base.repeat(4, 1, 1, 1)[:, :, :, :]  # 12 images: 4 copies of each of 3 groups' image
    real_groups = torch.arange(3).repeat(4)
    syn = base.clone().requires_grad_(True)
    for seed in range(6):
        out_real, out_syn = dsa.siamese((real, real_groups), (syn, torch.arange(3)), groups=3,
                                        generator=torch.Generator().manual_seed(seed))
        for j in range(12):
            torch.testing.assert_close(out_real[j], out_syn[real_groups[j]].detach())
    out_syn.square().sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_unknown_op():
    with pytest.raises(ConfigError, match="unknown DSA op"):
        DSA(__import__("ddkit.augment", fromlist=["DSAConfig"]).DSAConfig(strategy="color_blur"))
