"""Image grids of distilled sets."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddkit.artifact import DistilledSet  # noqa: E402
from ddkit.utils import atomic_path  # noqa: E402


def save_grid(ds: DistilledSet, path: str | Path, max_per_class: int = 20) -> Path:
    """Save a PNG with one row per class (class name at the left), up to ``max_per_class``
    images per row, from pixel-space images in [0, 1]. Soft labels are shown by argmax.

    Raises:
        OutputError: ``path`` cannot be written.
    """
    labels = ds.hard_labels()
    rows = [torch.nonzero(labels == c).flatten()[:max_per_class] for c in range(ds.num_classes)]
    cols = max(1, max(r.numel() for r in rows))
    k = ds.num_classes
    fig, axes = plt.subplots(k, cols, figsize=(0.9 * cols + 1.2, 0.9 * k), squeeze=False)
    grey = ds.images.shape[1] == 1
    for c, idx in enumerate(rows):
        for j in range(cols):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < idx.numel():
                img = ds.images[idx[j]].clamp(0, 1)
                if grey:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
        axes[c][0].set_ylabel(ds.class_names[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{ds.method} · {ds.dataset} · IPC {ds.ipc}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)
