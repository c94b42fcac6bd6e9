"""Shared fixtures: real data (Fashion-MNIST system copy, MNIST from shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ddkit

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def fmnist():
    """Fashion-MNIST train and test splits (the Debian package or DDKIT_DATA)."""
    # the Debian package (scripts/setup.sh installs it as root); elsewhere torchvision may download it
    return (ddkit.load_dataset("fashion-mnist", "train", download=True),
            ddkit.load_dataset("fashion-mnist", "test", download=True))


@pytest.fixture(scope="session")
def mnist():
    """MNIST train and test splits from ../shared/data/mnist."""
    if not MNIST_ROOT.is_dir():
        pytest.skip(f"MNIST files not at {MNIST_ROOT}")
    return (ddkit.load_dataset("mnist", "train", data_root=MNIST_ROOT),
            ddkit.load_dataset("mnist", "test", data_root=MNIST_ROOT))


@pytest.fixture(scope="session")
def digits():
    return ddkit.load_dataset("digits", "train"), ddkit.load_dataset("digits", "test")
