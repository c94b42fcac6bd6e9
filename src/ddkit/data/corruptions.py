"""The ten CIFAR-10-C corruptions of CCIFAR10-DD, at CIFAR-10-C's parameters for 32×32 images.

Sources: Hendrycks & Dietterich, *Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations* (ICLR 2019), CIFAR-10-C's parameter tables, as the
Biased-DD builder (github: yaolu-zjut/Biased-DD, ``corrupted_cifar10_protocol.py``) applies
them: level L ∈ 1..5 indexes each table (CCIFAR10-DD's severity s uses L = s + 1). The
formulas are written here from that description, with scikit-image, SciPy, OpenCV and PIL
doing the image work; ``imagecorruptions-imaug`` (a ddkit dependency) is not called for
the corruptions themselves because it carries ImageNet-C's parameters, not CIFAR-10-C's.

Where this port differs from the authors' code (all documented, none changes a parameter):

* Randomness: every image draws from its own ``numpy.random.Generator`` seeded with
  ``(seed, stream, index)``, not from NumPy's global stream; so the images are
  deterministic and independent of order, but not the authors' draws.
* ``snow``: the authors blur the snow layer with ImageMagick's motion blur (Wand); here a
  one-sided Gaussian line kernel of ``2·radius + 1`` taps along the drawn angle (edge
  pixels repeated), the same kernel shape, not bit-identical to ImageMagick.
* ``frost``: the frost pictures are missing from the Biased-DD repository; here they are
  ImageNet-C's frost1..frost5 as shipped inside ``imagecorruptions-imaug`` (the authors
  pick among the first five as well), resized by 0.2 as CIFAR-10-C does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO

import numpy as np
import torch

from ddkit.errors import ConfigError

__all__ = ["CORRUPTION_FUNCTIONS", "corrupt", "corrupt_images"]

Image = np.ndarray  # H×W×3 RGB uint8
Rng = np.random.Generator


def _level(table: Sequence, level: int):
    return table[level - 1]


def _clipped_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
    """Zoom the central crop of an H×H(×C) array by ``zoom`` (bilinear) back to H×H."""
    from scipy.ndimage import zoom as nd_zoom

    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    out = nd_zoom(img[top:top + ch, top:top + ch], (zoom, zoom, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def _plasma(rng: Rng, size: int = 32, decay: float = 3.0) -> np.ndarray:
    """A diamond-square height map, ``size``×``size`` (a power of two) in [0, 1]."""
    grid = np.zeros((size, size), dtype=np.float64)
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        # squares: each centre is the mean of its four corners plus noise
        acc = corners + np.roll(corners, -1, axis=0)
        acc = acc + np.roll(acc, -1, axis=1)
        grid[half:size:step, half:size:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        # diamonds: the edge midpoints from their two centres and two corners
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _motion_blur(layer: np.ndarray, radius: int, sigma: float, angle_deg: float) -> np.ndarray:
    """One-sided Gaussian motion blur of an H×W float array along ``angle_deg``."""
    taps = 2 * int(radius) + 1
    w = np.exp(-(np.arange(taps) ** 2) / (2.0 * sigma * sigma))
    w /= w.sum()
    t = np.deg2rad(angle_deg)
    h, wd = layer.shape
    padded = np.pad(layer, taps, mode="edge")
    out = np.zeros_like(layer)
    for i, wi in enumerate(w):
        dx, dy = int(round(i * np.cos(t))), int(round(i * np.sin(t)))
        out += wi * padded[taps + dy:taps + dy + h, taps + dx:taps + dx + wd]
    return out


def snow(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C snow: a snow layer (zoomed Gaussian noise, thresholded, motion-blurred)
    added twice (once rotated 180°) to a brightened image.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    loc, scale, zoom, thresh, radius, sigma, keep = _level([
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], level)
    import cv2

    img = x.astype(np.float32) / 255.0
    layer = rng.normal(loc, scale, size=img.shape[:2])
    layer = _clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < thresh] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8) / 255.0  # through an 8-bit image, as the authors'
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45))[..., None]
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    img = keep * img + (1 - keep) * np.maximum(img, grey * 1.5 + 0.5)
    return np.clip(img + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost_pictures() -> list[np.ndarray]:
    from importlib.resources import files

    import cv2

    folder = files("imagecorruptions") / "frost"
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
    out = []
    for n in names:
        raw = np.frombuffer((folder / n).read_bytes(), dtype=np.uint8)
        pic = cv2.imdecode(raw, cv2.IMREAD_COLOR)
        out.append(cv2.resize(pic, (0, 0), fx=0.2, fy=0.2)[..., ::-1])  # BGR → RGB
    return out


_FROST: list[np.ndarray] | None = None


def frost(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C frost: a random crop of a frost picture blended in.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    global _FROST
    keep, add = _level([(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], level)
    if _FROST is None:
        try:
            _FROST = _frost_pictures()
        except Exception as exc:  # the package or its pictures missing
            raise ConfigError(f"frost needs imagecorruptions-imaug's frost pictures ({exc}); "
                              "pip install imagecorruptions-imaug") from None
    pic = _FROST[int(rng.integers(len(_FROST)))]
    h, w = x.shape[:2]
    top, left = int(rng.integers(0, pic.shape[0] - h)), int(rng.integers(0, pic.shape[1] - w))
    return np.clip(keep * x.astype(np.float64) + add * pic[top:top + h, left:left + w], 0, 255)


def fog(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C fog: a diamond-square plasma fractal added, rescaled by the image
    maximum.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    amount, decay = _level([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], level)
    img = x / 255.0
    top = img.max()
    h, w = img.shape[:2]
    size = 1 << (max(h, w, 2) - 1).bit_length()  # the smallest power of two ≥ the image side
    img = img + amount * _plasma(rng, size, decay)[:h, :w][..., None]
    return np.clip(img * top / (top + amount), 0, 1) * 255


def _hsv_channel(x: Image, channel: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x / 255.0)
    hsv[..., channel] = fn(hsv[..., channel])
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def brightness(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C brightness: HSV value shifted up.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    c = _level([0.05, 0.1, 0.15, 0.2, 0.3], level)
    return _hsv_channel(x, 2, lambda v: np.clip(v + c, 0, 1))


def saturate(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C saturate: HSV saturation scaled and shifted.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    gain, shift = _level([(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], level)
    return _hsv_channel(x, 1, lambda s: np.clip(s * gain + shift, 0, 1))


def contrast(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C contrast: pixel deviations from the per-channel mean scaled.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    c = _level([0.75, 0.5, 0.4, 0.3, 0.15], level)
    img = x / 255.0
    means = img.mean(axis=(0, 1), keepdims=True)
    return np.clip((img - means) * c + means, 0, 1) * 255


def spatter(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C spatter: water drops (levels 1-3) or mud (levels 4-5) from thresholded
    smoothed noise.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    loc, scale, sigma, thresh, strength, mud = _level([
        (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)], level)
    import cv2
    from skimage.filters import gaussian

    img = x.astype(np.float32) / 255.0
    liquid = gaussian(rng.normal(loc, scale, size=img.shape[:2]), sigma=sigma)
    liquid[liquid < thresh] = 0
    if not mud:  # water drops, pale turquoise, with bright rims
        drops = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(drops, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
        m = drops * dist
        top = float(m.max())
        m = m / top * strength if top > 0 else m
        colour = np.array([175, 238, 238], dtype=np.float32) / 255.0
        return np.clip(img + m[..., None] * colour, 0, 1) * 255
    m = gaussian(np.where(liquid > thresh, 1, 0).astype(np.float32), sigma=strength)
    m[m < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown
    return np.clip(img * (1 - m[..., None]) + colour * m[..., None], 0, 1) * 255


def elastic(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C elastic: a random affine warp, then a smoothed random displacement
    field.

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    size = 32
    alpha, sigma, affine = _level([(size * 0, size * 0, size * 0.08), (size * 0.05, size * 0.2, size * 0.07),
                                   (size * 0.08, size * 0.06, size * 0.06), (size * 0.1, size * 0.04, size * 0.05),
                                   (size * 0.1, size * 0.03, size * 0.03)], level)
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    img = x.astype(np.float32) / 255.0
    h, w = img.shape[:2]
    centre = np.float32((h, w)) // 2
    side = min(h, w) // 3
    src = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
    img = cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    yy, xx, zz = np.meshgrid(np.arange(h), np.arange(w), np.arange(img.shape[2]), indexing="ij")
    coords = (yy + dy[..., None], xx + dx[..., None], zz)
    return np.clip(map_coordinates(img, coords, order=1, mode="reflect"), 0, 1) * 255


def jpeg(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C jpeg: JPEG round trip at the level's quality (PIL).

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    from PIL import Image as PILImage

    quality = _level([80, 65, 58, 50, 40], level)
    buf = BytesIO()
    PILImage.fromarray(x).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with PILImage.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def pixelate(x: Image, level: int, rng: Rng) -> np.ndarray:
    """CIFAR-10-C pixelate: box-downsampled and box-upsampled (PIL).

    x: uint8 H×W×3 RGB; level 1..5; returns H×W×3 in [0, 255].
    """
    from PIL import Image as PILImage

    c = _level([0.95, 0.9, 0.85, 0.75, 0.65], level)
    h, w = x.shape[:2]
    im = PILImage.fromarray(x).resize((int(w * c), int(h * c)), PILImage.BOX).resize((w, h), PILImage.BOX)
    return np.asarray(im)


#: name → f(image H×W×3 uint8, level 1..5, generator) → H×W×3 in [0, 255]
CORRUPTION_FUNCTIONS: dict[str, Callable[[Image, int, Rng], np.ndarray]] = {
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast, "spatter": spatter,
    "elastic": elastic, "jpeg": jpeg, "pixelate": pixelate, "saturate": saturate,
}


def corrupt(image: np.ndarray, name: str, level: int, rng: Rng) -> np.ndarray:
    """One corrupted image.

    Args:
        image: uint8 H×W×3 RGB (CIFAR-10's 32×32; ``elastic`` and the table values assume 32).
        name: a key of :data:`CORRUPTION_FUNCTIONS`.
        level: CIFAR-10-C level 1..5.
        rng: the image's NumPy generator.

    Returns:
        uint8 H×W×3: the corruption's float result truncated toward zero (as the authors'
        ``astype(np.uint8)``).

    Raises:
        ConfigError: unknown corruption, level outside 1..5, not an H×W×3 uint8 image.
    """
    if name not in CORRUPTION_FUNCTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTION_FUNCTIONS)}")
    if level not in range(1, 6):
        raise ConfigError(f"corruption level must be 1..5, got {level!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"corrupt takes uint8 H×W×3 images, got {image.dtype} {image.shape}")
    out = np.asarray(CORRUPTION_FUNCTIONS[name](image, level, rng), dtype=np.float64)
    return np.clip(out, 0, 255).astype(np.uint8)


def corrupt_images(images: torch.Tensor, names: Sequence[str], level: int, *, seed: int, stream: int = 0
                   ) -> torch.Tensor:
    """Corrupt every image with its own corruption (CCIFAR10-DD's builder).

    Args:
        images: uint8 N×3×H×W.
        names: N corruption names (:data:`CORRUPTION_FUNCTIONS`), image i gets ``names[i]``.
        level: CIFAR-10-C level 1..5 (CCIFAR10-DD: severity + 1).
        seed, stream: image i draws from ``numpy.random.default_rng((seed, stream, i))``.

    Returns:
        uint8 N×3×H×W.

    Raises:
        ConfigError: as :func:`corrupt`; ``names`` not one per image.
    """
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ConfigError(f"corrupt_images takes uint8 N×3×H×W images, got {images.dtype} {tuple(images.shape)}")
    if len(names) != images.shape[0]:
        raise ConfigError(f"{len(names)} corruption names for {images.shape[0]} images")
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(hwc)
    for i, name in enumerate(names):
        out[i] = corrupt(np.ascontiguousarray(hwc[i]), name, level, np.random.default_rng((seed, stream, i)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
