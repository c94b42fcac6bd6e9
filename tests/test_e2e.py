"""End to end on real data: distil Fashion-MNIST / MNIST subsets, evaluate on real test images."""

import pytest
import torch

import ddkit

pytestmark = pytest.mark.e2e


def test_dm_ipc10_fashion_mnist_beats_chance_clearly(fmnist, tmp_path):
    train, test = fmnist
    real = train.per_class_subset(500, seed=0)
    syn = ddkit.distill(real, "dm", 10, iterations=3, config={"batch_real": 64}, seed=0, device="cpu",
                        progress=False)
    assert syn.images.shape == (100, 1, 28, 28) and syn.labels.bincount().tolist() == [10] * 10
    syn.save(tmp_path / "dm.safetensors")
    # ConvNet-3 of width 32: the protocol's network shape at 1/16 of its convolution cost
    result = ddkit.evaluate(tmp_path / "dm.safetensors", runs=2, epochs=60, augment=False, device="cpu",
                            model="convnet-w32", test=test.per_class_subset(200, seed=1))
    assert result.runs == 2 and len(result.accuracies) == 2
    assert result.mean > 0.5, result  # chance is 0.10


def test_mnist_random_and_dm_resume(mnist, tmp_path):
    train, test = mnist
    real = train.per_class_subset(300, seed=0)
    rnd = ddkit.distill(real, "random", 10, seed=0, progress=False)
    acc = ddkit.evaluate(rnd, runs=1, epochs=60, augment=False, device="cpu", model="convnet-w32",
                         test=test.per_class_subset(200, seed=1))
    assert acc.mean > 0.6
    cfg = {"batch_real": 32, "checkpoint_every": 2}
    whole = ddkit.distill(real, "dm", 1, iterations=4, config=cfg, seed=3, device="cpu", progress=False)
    ck = tmp_path / "ck"
    ddkit.distill(real, "dm", 1, iterations=2, config=cfg, seed=3, device="cpu", progress=False, checkpoint=ck)
    resumed = ddkit.distill(real, "dm", 1, iterations=4, config=cfg, seed=3, device="cpu", progress=False,
                            checkpoint=ck, resume=True)
    assert torch.equal(resumed.images, whole.images)
