"""Audit parts: adversarial and corruption accuracy, class fairness."""

import numpy as np
import pytest
import torch

import ddkit
from ddkit.audit.fairness import fairness
from ddkit.audit.robustness import adversarial_accuracy, corrupt_grid, corrupt_images, corruption_accuracy
from ddkit.errors import ConfigError


@pytest.fixture(scope="module")
def trained(fmnist):
    train, test = fmnist
    ds = ddkit.distill(train.per_class_subset(20, seed=0), "random", 20, seed=0, progress=False)
    nets = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=30, augment=False, device="cpu")
    return nets, test.per_class_subset(10, seed=1)


@pytest.mark.e2e
def test_adversarial_accuracy_falls_with_epsilon(trained):
    nets, test = trained
    net, m, s = nets.networks[0], test.mean, test.std
    clean = ddkit.train.accuracy(net, test.images, test.labels, normalize=test.normalize)
    small = adversarial_accuracy(net, test.images, test.labels, m, s, attack="fgsm", eps=1 / 255)
    big = adversarial_accuracy(net, test.images, test.labels, m, s, attack="pgd", eps=0.3, steps=5)
    assert clean > 0.5 and big < small <= clean + 0.02 and big < 0.2
    for kw, text in (({"attack": "cw"}, "unknown attack"), ({"eps": 0}, "ε"), ({"eps": 2.0}, "ε")):
        with pytest.raises(ConfigError, match=text):
            adversarial_accuracy(net, test.images[:2], test.labels[:2], m, s, **kw)


@pytest.mark.e2e
def test_corruptions_on_28px_grey_images(trained):
    nets, test = trained
    x = test.images[:20]
    c = corrupt_images(x, "gaussian_noise", 5)
    assert c.shape == x.shape and c.dtype == torch.uint8 and (c.float() - x.float()).abs().mean() > 5
    assert corrupt_images(x, "brightness", 1).shape == x.shape
    acc = corruption_accuracy(nets.networks[0], test.images, test.labels, test.normalize,
                              corruptions=("gaussian_noise", "contrast"), severities=(1, 5))
    assert set(acc) == {"gaussian_noise", "contrast"} and acc["gaussian_noise"][5] <= acc["gaussian_noise"][1] + 0.05
    grid = corrupt_grid(test.images, ("gaussian_noise", "contrast"), (1, 5), seed=3)
    again = corrupt_grid(test.images, ("gaussian_noise", "contrast"), (1, 5), seed=3)
    assert torch.equal(grid["gaussian_noise"][5], again["gaussian_noise"][5])  # seeded: reproducible
    assert not torch.equal(grid["gaussian_noise"][5], corrupt_grid(test.images, ("gaussian_noise",), (5,),
                                                                   seed=4)["gaussian_noise"][5])
    paired = corruption_accuracy(nets.networks[0], test.images, test.labels, test.normalize,
                                 corruptions=("gaussian_noise", "contrast"), severities=(1, 5), corrupted=grid)
    assert paired["contrast"][5] == acc["contrast"][5]  # contrast is deterministic: the same figure either way
    with pytest.raises(ConfigError, match="no corrupted copy"):
        corruption_accuracy(nets.networks[0], test.images, test.labels, test.normalize,
                            corruptions=("fog",), severities=(1,), corrupted=grid)
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt_images(x, "rain", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt_images(x, "fog", 6)


def test_fairness_figures():
    f = fairness(np.array([[0.9, 0.5, 0.7], [0.8, 0.6, 0.7]]), reference=np.array([[0.9, 0.8, 0.85]]))
    assert f["worst_class"] == 1 and f["worst"] == pytest.approx(0.55) and f["range"] == pytest.approx(0.3)
    assert f["std_ratio"] > 1 and f["delta_per_class"][1] == pytest.approx(-0.25)
    with pytest.raises(ConfigError):
        fairness(np.array([[1.5, 0.2]]))
