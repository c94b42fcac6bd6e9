"""Evaluation protocol: label kinds pick the loss, and the result says which."""

import torch

import ddkit


def _set(real, labels, kind):
    sub = real.per_class_subset(5, seed=0)
    return ddkit.DistilledSet(images=sub.float_images(), labels=labels(sub.labels), method="test", dataset="digits",
                              mean=real.mean, std=real.std, class_names=real.class_names, ipc=5, label_kind=kind)


def test_regression_labels_train_with_frepo_loss_and_probabilities_with_ce(digits):
    real, test = digits
    centred = _set(real, lambda y: torch.nn.functional.one_hot(y, 10).float() - 0.1, "regression")  # KIP-style
    probs = _set(real, lambda y: torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01, "probabilities")
    r_sq = ddkit.evaluate(centred, runs=1, epochs=40, augment=False, device="cpu", test=test)
    r_ce = ddkit.evaluate(probs, runs=1, epochs=40, augment=False, device="cpu", test=test)
    assert r_sq.settings["loss"] == "sq" and r_ce.settings["loss"] == "ce" and r_sq.settings["name"] == "dsa"
    assert r_sq.mean > 0.4 and r_ce.mean > 0.4  # 50 real digits; chance is 0.1
