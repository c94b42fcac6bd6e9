"""Spectrum analysis: which band of the FFC a distilled set matches (UniDD's lens).

For a feature map φ (a randomly initialised zoo network with a fixed seed, as DM's
feature maps are, or any network passed in), real features ``H`` (n×d) and distilled
features ``H_s``, with one-hot labels ``Y``:

* the FFC eigen-spectra ``λ(HᵀH/n)`` and ``λ(H_sᵀH_s/n_s)`` (descending);
* the FLC energy per eigen-direction of the *real* FFC: with ``HᵀH/n = U diag(λ) Uᵀ``,
  ``e_j = ‖u_jᵀ F‖² / ‖F‖²`` for ``F = HᵀY/n`` (real) and ``F_s = H_sᵀY_s/n_s`` (distilled),
  both in the real basis, so the two are directly comparable;
* the band shares: ``low`` = energy in the top-k directions (large λ, low frequency in
  UniDD's reading), ``high`` = the rest; and the per-band FLC mismatch
  ``‖U_bandᵀ (F − F_s)‖ / ‖F‖``.

A low-frequency matcher (DM) leaves the distilled FLC concentrated like the real one in the
top directions; a high-frequency matcher (KRR filters) moves energy into the tail.
Source: Bo, Liu, Wang, *Understanding Dataset Distillation via Spectral Filtering* (UniDD),
ICLR 2026, arXiv 2503.01212, Sec. 3 (FFC/FLC, filters as bands).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset
from ddkit.errors import ConfigError
from ddkit.models import get_model
from ddkit.spectral.stats import feature_stats
from ddkit.utils import atomic_path, resolve_device


@dataclass
class SpectrumResult:
    """Spectra and FLC band energies of a real set and a distilled set (JSON-serialisable).

    ``eig_*`` are FFC eigenvalues (descending, length d); ``energy_*`` the FLC energy share
    per real eigen-direction (length d, sums to 1); ``low_share_*`` the share in the top
    ``top_k`` directions; ``mismatch_low``/``mismatch_high`` the relative FLC mismatch per band.
    """

    dataset: str
    method: str
    ipc: int
    model: str
    seed: int
    n_real: int
    n_distilled: int
    top_k: int
    eig_real: list[float]
    eig_distilled: list[float]
    energy_real: list[float]
    energy_distilled: list[float]
    low_share_real: float
    low_share_distilled: float
    mismatch_low: float
    mismatch_high: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@torch.no_grad()
def _features(net, images: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    return torch.cat([net.embed(images[i:i + batch].to(device)).double().cpu() for i in range(0, len(images), batch)])


def spectrum(distilled: DistilledSet, real: ImageDataset, *, model: str = "convnet", n_real: int = 5000,
             top_k: int = 20, seed: int = 0, device: str | torch.device = "auto") -> SpectrumResult:
    """Compare the FFC spectrum and FLC band energy of ``real`` and ``distilled``.

    Args:
        distilled: a distilled set of the same image shape and classes as ``real``.
        real: the real training set; a class-balanced subset of ``n_real`` images is used.
        model: zoo network whose ``embed`` is the feature map, initialised with ``seed``.
        top_k: number of leading eigen-directions counted as the low band (1 ≤ top_k < d).

    Returns:
        :class:`SpectrumResult`.

    Raises:
        ConfigError: shapes/classes differ, or ``top_k`` out of range.
    """
    if tuple(distilled.images.shape[1:]) != (real.channels, *real.image_size):
        raise ConfigError(f"distilled images {tuple(distilled.images.shape[1:])} do not match {real.name} images")
    if distilled.num_classes != real.num_classes:
        raise ConfigError("distilled set and real data have different numbers of classes")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = get_model(model, real.channels, real.num_classes, real.image_size[0]).to(dev).eval()
    sub = real.per_class_subset(max(1, n_real // real.num_classes), seed=seed)
    h_real = _features(net, real.normalize(sub.float_images()), dev)
    h_syn = _features(net, distilled.normalized_images(), dev)
    d = h_real.shape[1]
    if not 1 <= top_k < d:
        raise ConfigError(f"top_k must be in 1..{d - 1}, got {top_k}")
    k = real.num_classes
    y_syn = distilled.labels.double() if distilled.soft_labels else distilled.labels
    s_real = feature_stats(h_real, sub.labels, num_classes=k)
    s_syn = feature_stats(h_syn, y_syn, num_classes=k)
    lam, u = torch.linalg.eigh(s_real.ffc)
    lam, u = lam.flip(0).clamp_min(0), u.flip(1)
    lam_syn = torch.linalg.eigvalsh(s_syn.ffc).flip(0).clamp_min(0)

    def energy(flc: torch.Tensor) -> torch.Tensor:
        e = ((u.mT @ flc) ** 2).sum(1)
        return e / e.sum().clamp_min(1e-300)

    e_real, e_syn = energy(s_real.flc), energy(s_syn.flc)
    diff = u.mT @ (s_real.flc - s_syn.flc)
    norm = s_real.flc.norm().clamp_min(1e-300)
    return SpectrumResult(
        dataset=real.name, method=distilled.method, ipc=distilled.ipc, model=model, seed=seed,
        n_real=int(h_real.shape[0]), n_distilled=int(h_syn.shape[0]), top_k=top_k,
        eig_real=lam.tolist(), eig_distilled=lam_syn.tolist(), energy_real=e_real.tolist(),
        energy_distilled=e_syn.tolist(), low_share_real=float(e_real[:top_k].sum()),
        low_share_distilled=float(e_syn[:top_k].sum()), mismatch_low=float(diff[:top_k].norm() / norm),
        mismatch_high=float(diff[top_k:].norm() / norm),
    )


def save_spectrum(results: list[SpectrumResult], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``spectrum.json`` (all results) and ``spectrum.png`` (spectra and cumulative FLC
    energy, real and each distilled set side by side) into ``out_dir``; returns both paths.

    Raises:
        OutputError: ``out_dir`` cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    js, png = out / "spectrum.json", out / "spectrum.png"
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in results], indent=2))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    r0 = results[0]
    x = torch.arange(1, len(r0.eig_real) + 1)
    a.semilogy(x, torch.tensor(r0.eig_real).clamp_min(1e-12), "k-", label=f"real ({r0.dataset})")
    b.plot(x, torch.tensor(r0.energy_real).cumsum(0), "k-", label="real")
    for r in results:
        tag = f"{r.method} IPC {r.ipc}"
        a.semilogy(torch.arange(1, len(r.eig_distilled) + 1), torch.tensor(r.eig_distilled).clamp_min(1e-12),
                   label=tag)
        b.plot(x, torch.tensor(r.energy_distilled).cumsum(0), label=f"{tag} (low share {r.low_share_distilled:.3f})")
    a.set(title="FFC eigen-spectrum", xlabel="eigen-index (descending λ)", ylabel="λ")
    b.axvline(r0.top_k, color="grey", ls=":", lw=1)
    b.set(title="cumulative FLC energy in the real FFC basis", xlabel="eigen-direction (low → high frequency)",
          ylabel="share of ‖HᵀY‖²", xscale="log")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return js, png
