"""Networks used to distil and evaluate, as defined in the DC/DSA/DM reference code.

All models take standardised images N×C×H×W (float32) and return logits N×K. Every model
has ``embed(x) -> N×D`` (the features before the final linear classifier) and
``classifier`` (that linear layer), as DM and the KRR methods need them.

Architectures (Zhao et al., DC, ICLR 2021, appendix and reference code):

* ``convnet``: depth × [Conv3×3(width) → norm → act → pool2×2] → Linear. Default: depth 3,
  width 128, instance norm (GroupNorm with one group per channel, affine), ReLU, average
  pooling. For 1-channel 28×28 inputs the first conv pads by 3, as the reference code
  does, so the feature map is 128×4×4 (the paper digest's "128×3×3" does not match the
  code; we follow the code).
* ``mlp``: 3 layers, 128 hidden units, ReLU.
* ``lenet``: LeNet-5 with ReLU and max pooling.
* ``alexnet``: the 5-conv AlexNet variant of the DC code (width 128/192/256).
* ``vgg11`` / ``vgg11bn``: VGG-11 with instance / batch norm.
* ``resnet18`` / ``resnet18bn``: CIFAR-style ResNet-18 (3×3 stem, no max pool) with
  instance / batch norm.
* ``frepo-conv`` / ``frepo-convnn``: FRePo's ``conv`` (Zhou et al., NeurIPS 2022, authors'
  JAX code) with batch norm / without normalisation (FRePo's distillation and evaluation
  networks; options ``width``, ``depth``, ``norm``).
* ``rfad-convnet`` / ``rfad-convnet-w128``: RFAD's ConvNet (no norm, Gaussian init, first
  conv padded by 1 at any size) at width 1024 (its finite evaluation network) / 128;
  :class:`RFADConvNet` is also KIP's kernel network (width 256).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.errors import ModelError


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ModelError(f"unknown norm {kind!r}; use instance, batch, layer or none")


def _act(kind: str) -> nn.Module:
    # in-place ReLU, as the DC/DSA/DM reference ConvNet: the same values, one memory pass
    # fewer (a training step 1.35× faster, measured once on a 2-core CPU: docs/methods.md, "Speed")
    acts = {"relu": lambda: nn.ReLU(inplace=True), "sigmoid": nn.Sigmoid, "leakyrelu": lambda: nn.LeakyReLU(0.01)}
    if kind not in acts:
        raise ModelError(f"unknown activation {kind!r}; use {', '.join(acts)}")
    return acts[kind]()


def _pool(kind: str) -> nn.Module:
    pools = {"avg": lambda: nn.AvgPool2d(2, 2), "max": lambda: nn.MaxPool2d(2, 2), "none": nn.Identity}
    if kind not in pools:
        raise ModelError(f"unknown pooling {kind!r}; use avg, max or none")
    return pools[kind]()


class ConvNet(nn.Module):
    """The field's ConvNet: ``depth`` blocks of conv3×3 → norm → act → pool, then linear.

    Args:
        channels: input channels C. num_classes: K. image_size: H (= W) in pixels.
        width: conv channels (128). depth: number of blocks (3).
        norm: ``instance`` (default), ``batch``, ``layer`` or ``none``.
        act: ``relu`` (default), ``sigmoid`` or ``leakyrelu``. pooling: ``avg``, ``max``, ``none``.

    Input N×C×H×W float32 (standardised); output N×K logits; ``embed`` gives N×D features
    with D = width · (H'/2^depth)², H' = 32 for 1-channel 28×28 input (first conv pads 3).
    """

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, width: int = 128,
                 depth: int = 3, norm: str = "instance", act: str = "relu", pooling: str = "avg"):
        super().__init__()
        layers: list[nn.Module] = []
        size = 32 if (image_size == 28 and channels == 1) else image_size
        c_in = channels
        for d in range(depth):
            pad = 3 if (channels == 1 and d == 0 and image_size == 28) else 1
            layers += [nn.Conv2d(c_in, width, 3, padding=pad), _norm(norm, width), _act(act)]
            if pooling != "none":
                layers.append(_pool(pooling))
                size //= 2
            c_in = width
        if size < 1:
            raise ModelError(f"convnet depth {depth} is too deep for {image_size}×{image_size} images")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def split(self) -> tuple[nn.Module, nn.Module]:
        """(front, rear) sharing this network's parameters: front = the conv trunk
        (N×width×s×s maps), rear = flatten + classifier; ``rear(front(x)) == self(x)``."""
        return self.features, nn.Sequential(nn.Flatten(), self.classifier)


class MLP(nn.Module):
    """3-layer MLP (128 hidden, ReLU) on flattened images."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, hidden: int = 128):
        super().__init__()
        d = channels * image_size * image_size
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 (ReLU, max pool); pads the first conv by 2 for 1-channel 28×28 input."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32):
        super().__init__()
        pad = 2 if image_size == 28 else 0
        size = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if size < 1:
            raise ModelError(f"lenet needs images of at least 16×16, got {image_size}×{image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * size * size, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        )
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class AlexNet(nn.Module):
    """The AlexNet variant of the DC reference code (5 convs, widths 128-192-256-192-192)."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32):
        super().__init__()
        pad = 4 if channels == 1 and image_size == 28 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        size = (image_size + 2 * pad - 4) // 8
        if size < 1:
            raise ModelError(f"alexnet needs images of at least 8×8, got {image_size}×{image_size}")
        self.feature_dim = 192 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class VGG11(nn.Module):
    """VGG-11 (8 convs) with instance or batch norm; 28×28 input (1 or 3 channels) is padded to 32
    by the first conv (padding 3), as the DC code does for MNIST."""

    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instance"):
        super().__init__()
        if image_size < 32 and image_size != 28:
            raise ModelError(f"vgg11 needs 32×32 or 28×28 images, got {image_size}×{image_size}")
        layers: list[nn.Module] = []
        c_in, first = channels, True
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            pad = 3 if (first and image_size == 28) else 1
            layers += [nn.Conv2d(c_in, v, 3, padding=pad), _norm(norm, v), nn.ReLU()]
            c_in, first = v, False
        size = (32 if image_size == 28 else image_size) // 32
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self._split_at = 5 * 3 + 3  # modules of the first 8 cfg entries (5 conv blocks, 3 pools): 512 maps
        self.feature_dim = 512 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def split(self) -> tuple[nn.Module, nn.Module]:
        """(front, rear) sharing parameters: front = the first 8 cfg entries (up to the 4th
        conv: N×512×4×4 on 32×32 or padded 28×28, ELF's split), rear = the rest + classifier."""
        return self.features[:self._split_at], nn.Sequential(self.features[self._split_at:], self.classifier)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max pool, global average pool) with a norm option."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instance"):
        super().__init__()
        if image_size < 16:
            raise ModelError(f"resnet18 needs images of at least 16×16, got {image_size}×{image_size}")
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), _norm(norm, 64), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(c_in, c_out, stride, norm), _BasicBlock(c_out, c_out, 1, norm)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def split(self) -> tuple[nn.Module, nn.Module]:
        """(front, rear) sharing parameters: front = stem + stages 1–3 + the first block of
        stage 4 (N×512×4×4 on 28×28 or 32×32, ELF's split), rear = the second block of stage 4,
        global average pooling and the classifier."""
        return (nn.Sequential(self.stem, self.layers[:7]),
                nn.Sequential(self.layers[7:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.classifier))


class FRePoConvNet(nn.Module):
    """FRePo's ``conv`` network (the authors' ``lib/models`` ``Conv``), in PyTorch.

    ``depth`` blocks; block ``i``: [norm (i ≥ 1)] → Conv3×3(``width·2^i``, bias) → ReLU →
    AvgPool 2×2. The first conv pads by 3 for 1-channel input, by 1 otherwise. Then a linear
    classifier on the flattened features.

    Args:
        channels: C. num_classes: K. image_size: H (= W) in pixels.
        width: channels of the first block (128). depth: blocks (3).
        norm: ``"batch"`` (BatchNorm2d, eps 1e-5, momentum 0.9 = flax's 0.1) or ``"none"``.

    Input N×C×H×W float32 (standardised); ``embed`` → N×D features with
    D = width·2^(depth−1)·(H'/2^depth)², H' = H + 4 for 1-channel input, H otherwise;
    ``forward`` → N×K logits. Weights: truncated LeCun normal (flax's default), biases 0.

    Raises:
        ModelError: unknown ``norm``, width/depth < 1, or the image is too small.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ModelError(f"frepo-conv norm must be 'batch' or 'none', got {norm!r}")
        if width < 1 or depth < 1:
            raise ModelError(f"frepo-conv needs width ≥ 1 and depth ≥ 1, got {width}, {depth}")
        pad0 = 3 if channels == 1 else 1
        size = image_size + 2 * pad0 - 2
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(depth):
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(c_in, eps=1e-5, momentum=0.9))
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=pad0 if i == 0 else 1), nn.ReLU(), nn.AvgPool2d(2, 2)]
            size //= 2  # padding 1 keeps the size through later convs; the pool halves it
            c_in = c_out
        if size < 1:
            raise ModelError(f"frepo-conv depth {depth} is too deep for {image_size}×{image_size} images")
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # flax variance_scaling, truncated
                nn.init.trunc_normal_(mod.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(mod.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class RFADConvNet(nn.Module):
    """RFAD's random-feature ConvNet (``ConvNet_wide``, ``net_norm='none'``; yolky/RFAD
    models.py:77-169).

    The kernel network of KIP (width 256) and RFAD's finite evaluation network
    (``eval_distilled_set.py``: width 1024, ``rfad-convnet``).
    ``depth`` × [Conv3×3(``width``, padding 1, bias) → ReLU → AvgPool2×2], flatten. Conv weights
    ~ N(0, 2/fan_in), biases ~ N(0, 0.1²); the linear head (only the NTK kernel uses it) has the
    same law.

    Args:
        channels: C. num_classes: K (head outputs). image_size: H = W.
        width: conv channels (RFAD: 256). depth: blocks (3).
        generator: CPU generator for the initial weights (``None``: torch's global RNG).

    Input N×C×H×W float32; ``embed`` → N×D with D = width·⌊H/2^depth⌋²; ``forward`` → N×K.

    Raises:
        ModelError: the image is too small for ``depth`` pools.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 256, depth: int = 3,
                 generator: torch.Generator | None = None):
        super().__init__()
        size = image_size
        layers: list[nn.Module] = []
        c_in = channels
        for _ in range(depth):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, 2)]
            c_in, size = width, size // 2
        if size < 1:
            raise ModelError(f"the RFAD ConvNet of depth {depth} is too deep for {image_size}×{image_size} images")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        with torch.no_grad():
            for mod in self.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    fan_in = mod.weight[0].numel()
                    nn.init.normal_(mod.weight, 0.0, math.sqrt(2.0 / fan_in), generator=generator)
                    nn.init.normal_(mod.bias, 0.0, 0.1, generator=generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _convnet_variant(**fixed):
    return lambda c, k, s, **kw: ConvNet(c, k, s, **{**fixed, **kw})


MODELS = {
    "convnet": _convnet_variant(),
    "convnetbn": _convnet_variant(norm="batch"),
    "convnetln": _convnet_variant(norm="layer"),
    "convnetnn": _convnet_variant(norm="none"),
    "convnet-d1": _convnet_variant(depth=1),
    "convnet-d2": _convnet_variant(depth=2),
    "convnet-d4": _convnet_variant(depth=4),
    "convnet-w32": _convnet_variant(width=32),
    "convnet-w64": _convnet_variant(width=64),
    "convnet-w256": _convnet_variant(width=256),
    "convnet-w512": _convnet_variant(width=512),  # ELF's feature teacher
    "mlp": lambda c, k, s, **kw: MLP(c, k, s, **kw),
    "lenet": lambda c, k, s, **kw: LeNet(c, k, s, **kw),
    "alexnet": lambda c, k, s, **kw: AlexNet(c, k, s, **kw),
    "vgg11": lambda c, k, s, **kw: VGG11(c, k, s, norm="instance", **kw),
    "vgg11bn": lambda c, k, s, **kw: VGG11(c, k, s, norm="batch", **kw),
    "resnet18": lambda c, k, s, **kw: ResNet18(c, k, s, norm="instance", **kw),
    "resnet18bn": lambda c, k, s, **kw: ResNet18(c, k, s, norm="batch", **kw),
    "vgg11-bn": lambda c, k, s, **kw: VGG11(c, k, s, norm="batch", **kw),  # the spelling of the papers' tables
    "resnet18-bn": lambda c, k, s, **kw: ResNet18(c, k, s, norm="batch", **kw),
    "frepo-conv": lambda c, k, s, **kw: FRePoConvNet(c, k, s, **kw),
    "frepo-convnn": lambda c, k, s, **kw: FRePoConvNet(c, k, s, **{"norm": "none", **kw}),
    "rfad-convnet": lambda c, k, s, **kw: RFADConvNet(c, k, s, **{"width": 1024, **kw}),
    "rfad-convnet-w128": lambda c, k, s, **kw: RFADConvNet(c, k, s, **{"width": 128, **kw}),
}


def get_model(name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **kwargs
              ) -> nn.Module:
    """Build a freshly initialised network from the zoo.

    Args:
        name: a key of :data:`MODELS` (``convnet`` = ConvNet-3, width 128, instance norm).
        channels: input channels C (1 or 3). num_classes: K ≥ 2.
        image_size: H = W in pixels (or an (H, W) pair with H == W).
        **kwargs: architecture options (ConvNet: width, depth, norm, act, pooling).

    Returns:
        An ``nn.Module`` mapping N×C×H×W float32 to N×K logits, with ``embed`` and
        ``classifier``; attributes ``in_channels`` and ``image_size`` record what it takes.

    Raises:
        ModelError: unknown name or option, or the network cannot take this image size.
    """
    key = name.strip().lower()
    if key not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if isinstance(image_size, tuple):
        if image_size[0] != image_size[1]:
            raise ModelError(f"models take square images, got {image_size}")
        image_size = image_size[0]
    if channels < 1 or num_classes < 2:
        raise ModelError(f"need channels ≥ 1 and num_classes ≥ 2, got {channels}, {num_classes}")
    try:
        model = MODELS[key](channels, num_classes, image_size, **kwargs)
    except TypeError as exc:
        raise ModelError(f"bad option for model {name!r}: {exc}") from None
    model.in_channels = channels
    model.image_size = image_size
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, image_size, image_size))
    except RuntimeError as exc:
        raise ModelError(f"model {name!r} does not fit {channels}×{image_size}×{image_size} images: "
                         f"{str(exc).splitlines()[0]}") from None
    model.train()
    return model


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ModelError` unless ``x`` (N×C×H×W) matches the model's channels and size."""
    c, s = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if x.dim() != 4 or (c is not None and x.shape[1] != c) or (s is not None and x.shape[-1] != s):
        raise ModelError(f"model expects N×{c}×{s}×{s} images, got {tuple(x.shape)}")
