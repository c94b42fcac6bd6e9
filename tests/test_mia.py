"""Membership-inference scoring against answers known in closed form (synthetic Gaussian scores)."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddkit.audit import attack_metrics, lira_offline, lira_online, logit_confidence
from ddkit.errors import ConfigError


def test_logit_confidence_matches_its_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits.double(), 1)
    want = torch.log(p[[0, 1], [0, 2]]) - torch.log(torch.stack([p[0, 1] + p[0, 2], p[1, 0] + p[1, 1]]))
    torch.testing.assert_close(logit_confidence(logits, torch.tensor([0, 2])), want)
    assert torch.isfinite(logit_confidence(torch.tensor([[1000.0, -1000.0]]), torch.tensor([0]))).all()
    with pytest.raises(ConfigError):
        logit_confidence(torch.zeros(3, 1), torch.zeros(3))


def test_threshold_attack_auc_is_the_gaussian_answer():
    rng = np.random.default_rng(0)
    n = 20000
    member = rng.random(n) < 0.5
    scores = rng.normal(member.astype(float), 1.0)  # members N(1, 1), non-members N(0, 1)
    m = attack_metrics(scores, member)
    assert m.auc == pytest.approx(norm.cdf(1 / np.sqrt(2)), abs=0.01)  # P(X_in > X_out) = Φ(d/√2)
    assert m.balanced_accuracy == pytest.approx(norm.cdf(0.5), abs=0.01)  # best threshold at d/2
    tpr1 = 1 - norm.cdf(norm.ppf(0.99) - 1)  # at FPR 1 %, threshold z_0.99 of N(0,1)
    assert m.tpr_at_1pct_fpr == pytest.approx(tpr1, abs=0.02)
    perfect = attack_metrics(np.r_[np.ones(50) * 5, np.zeros(50)], np.r_[np.ones(50), np.zeros(50)].astype(bool))
    assert perfect.auc == 1 and perfect.tpr_at_0_1pct_fpr == 1 and perfect.balanced_accuracy == 1
    with pytest.raises(ConfigError, match="both"):
        attack_metrics(np.ones(3), np.ones(3, bool))


def _world(d=1.5, n=4000, shadows=16, seed=0):
    """Per-example score means spread widely (μ_i ~ N(0, 3²)): a global threshold is weak, a
    per-example test strong. IN scores N(μ_i + d, 1), OUT N(μ_i, 1)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, n)
    shadow_in = rng.random((shadows, n)) < 0.5
    shadow = rng.normal(mu + d * shadow_in, 1.0)
    member = rng.random(n) < 0.5
    target = rng.normal(mu + d * member, 1.0)
    return target, shadow, shadow_in, member


@pytest.mark.parametrize("fixed", [False, True])
def test_lira_online_reaches_the_optimal_auc_a_threshold_cannot(fixed):
    d = 1.5
    target, shadow, shadow_in, member = _world(d)
    lira = attack_metrics(lira_online(target, shadow, shadow_in, fixed_variance=fixed), member)
    base = attack_metrics(target, member)
    optimal = norm.cdf(d / np.sqrt(2))  # the likelihood-ratio test between N(μ_i, 1) and N(μ_i + d, 1)
    assert lira.auc == pytest.approx(optimal, abs=0.03 if fixed else 0.05)
    assert base.auc < lira.auc - 0.1
    assert lira.tpr_at_1pct_fpr > base.tpr_at_1pct_fpr


def test_lira_offline_uses_only_out_shadows():
    d = 1.5
    target, shadow, shadow_in, member = _world(d, shadows=32)
    out_only = np.where(shadow_in, np.nan, shadow)
    cols = [out_only[:, i][~np.isnan(out_only[:, i])][:6] for i in range(out_only.shape[1])]
    usable = np.array([c.size == 6 for c in cols])
    outs = np.stack([c for c, ok in zip(cols, usable, strict=True) if ok], 1)
    m = attack_metrics(lira_offline(target[usable], outs, fixed_variance=True), member[usable])
    assert m.auc == pytest.approx(norm.cdf(d / np.sqrt(2)), abs=0.04)
    with pytest.raises(ConfigError, match="finite"):
        lira_offline(np.array([np.nan]), np.zeros((2, 1)))
    with pytest.raises(ConfigError, match="at least one shadow"):
        lira_online(np.zeros(2), np.zeros((2, 2)), np.ones((2, 2), bool))
