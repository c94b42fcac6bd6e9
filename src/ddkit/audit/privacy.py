"""Membership inference against a distilled set's networks (the trust study's privacy part).

A set made with ``audit_split=SEED`` (``ddkit distill --audit-split SEED``) was distilled
from the seeded half of the training set (the *members*); the other half is the non-member
*pool*. The attacked (target) network is trained on the distilled set only; the question is
whether its outputs still tell the members from the pool.

* the threshold attack (Yeom et al.) on the logit-scaled confidence φ (:mod:`ddkit.audit.mia`);
* LiRA offline (Carlini et al. 2022), with ``shadows`` shadow pipelines: each distils, with
  the same method, config and IPC, from a random half of the pool and trains a network on
  its result; for every audited example, the shadows that did not see it give its OUT
  distribution (members are never in a shadow's data, so every shadow is OUT for them).

Both are scored on ``examples`` members and as many pool images, drawn with the seed.

* optionally (``art=True``), the adversarial-robustness-toolbox's membership attacks as a
  cross-check (:func:`art_membership`): ``MembershipInferenceBlackBoxRuleBased`` (member
  when the network classifies the example correctly) and ``MembershipInferenceBlackBox``
  (an attack model, a random forest here, trained on the network's probability vectors and
  labels of a seeded half of the audited members and non-members), both scored on the other
  half.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ddkit.artifact import DistilledSet
from ddkit.audit.mia import attack_metrics, logit_confidence
from ddkit.data import ImageDataset
from ddkit.errors import ConfigError

__all__ = ["art_membership", "member_split", "membership_audit"]


def member_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The audit split of a training set of ``n`` images: (members, pool), int64, disjoint,
    ⌊n/2⌋ and ⌈n/2⌉ indices, drawn from ``seed`` (the same on every machine)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


@torch.no_grad()
def _scores(nets, images: torch.Tensor, labels: torch.Tensor, normalize) -> np.ndarray:
    """Mean over ``nets`` of φ on pixel images (N,)."""
    out = []
    for net in nets:
        dev = next(net.parameters()).device
        was = net.training
        net.eval()
        phi = [logit_confidence(net(normalize(images[s:s + 500].to(dev))).cpu(), labels[s:s + 500])
               for s in range(0, images.shape[0], 500)]
        net.train(was)
        out.append(torch.cat(phi).numpy())
    return np.mean(out, axis=0)


def _art_split(is_member: np.ndarray, seed: int) -> np.ndarray:
    """Bool (N,): the examples ART's black-box attack model is fitted on (a seeded half of
    the members and of the non-members); the others are scored."""
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(is_member), bool)
    for side in (is_member, ~is_member):
        idx = np.flatnonzero(side)
        fit[rng.permutation(idx)[: len(idx) // 2]] = True
    return fit


def art_membership(nets, images: torch.Tensor, labels: torch.Tensor, is_member: np.ndarray, normalize,
                   num_classes: int, *, seed: int = 0) -> dict[str, Any]:
    """ART's black-box membership attacks against networks, beside ddkit's own.

    For each network (wrapped in ART's ``PyTorchClassifier`` on standardised input):
    ``MembershipInferenceBlackBoxRuleBased`` (Shokri et al.'s baseline as ART implements it:
    member iff correctly classified) and ``MembershipInferenceBlackBox`` with
    ``input_type="prediction"`` and a random-forest attack model, fitted on a seeded half of
    the examples (members and non-members each halved) and scored, like the rule, on the
    other half. Metrics (:func:`ddkit.audit.mia.attack_metrics`) from the rule's 0/1 output
    and the forest's membership probability; mean over the networks.

    Args:
        nets: trained networks taking standardised N×C×H×W input. images: pixel-space
            N×C×H×W float in [0, 1]; labels: int64 (N,) in 0..K−1. is_member: bool (N,),
            with at least 2 members and 2 non-members. normalize: pixels → network input.
        num_classes: K. seed: the split, and NumPy's generator for the forest.

    Returns:
        ``{"art_rule_based": metrics, "art_black_box": metrics, "art_examples": n scored,
        "art_attack_train": n fitted}`` (metrics as dicts, means over the networks).

    Raises:
        ConfigError: shapes disagree, or fewer than 2 members or non-members.
    """
    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
    )
    from art.estimators.classification import PyTorchClassifier

    is_member = np.asarray(is_member, bool)
    if images.shape[0] != labels.shape[0] or is_member.shape != (labels.shape[0],):
        raise ConfigError(f"ART membership attacks: {images.shape[0]} images, {labels.shape[0]} labels and "
                          f"{is_member.shape} membership flags do not match")
    if min(int(is_member.sum()), int((~is_member).sum())) < 2:
        raise ConfigError("ART membership attacks need at least 2 members and 2 non-members")
    fit = _art_split(is_member, seed)
    dev0 = next(nets[0].parameters()).device
    with torch.no_grad():
        x = torch.cat([normalize(images[s:s + 500].to(dev0)).cpu() for s in range(0, images.shape[0], 500)]).numpy()
    y = np.eye(num_classes, dtype=np.float32)[labels.cpu().numpy()]
    test = ~fit
    rows: dict[str, list[dict[str, Any]]] = {"art_rule_based": [], "art_black_box": []}
    for net in nets:
        dev = next(net.parameters()).device
        was = net.training
        net.eval()
        clf = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=num_classes, device_type="gpu" if dev.type == "cuda" else "cpu")
        rule = MembershipInferenceBlackBoxRuleBased(clf).infer(x[test], y[test]).reshape(-1)
        rows["art_rule_based"].append(vars(attack_metrics(rule.astype(float), is_member[test])))
        np.random.seed(seed)
        bb = MembershipInferenceBlackBox(clf, input_type="prediction", attack_model_type="rf")
        fm = fit & is_member
        fn = fit & ~is_member
        bb.fit(x[fm], y[fm], x[fn], y[fn])
        prob = bb.infer(x[test], y[test], probabilities=True).reshape(len(x[test]), -1)[:, -1]
        rows["art_black_box"].append(vars(attack_metrics(prob.astype(float), is_member[test])))
        net.train(was)
    out: dict[str, Any] = {name: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]}
                           for name, rs in rows.items()}
    for rs in out.values():
        rs["members"], rs["non_members"] = int(rs["members"]), int(rs["non_members"])
    out["art_examples"], out["art_attack_train"] = int(test.sum()), int(fit.sum())
    return out


def membership_audit(ds: DistilledSet, real: ImageDataset, nets, normalize, *, examples: int = 2000,
                     shadows: int = 0, shadow_epochs: int = 100, seed: int = 0, device: Any = "cpu",
                     iterations: int | None = None, art: bool = False) -> dict[str, Any]:
    """Threshold attack and (with ``shadows``) LiRA offline against networks trained on ``ds``.

    Args:
        ds: a set with ``extra["audit_split"]``. real: its full training split. nets: the
            target networks (their scores are averaged). normalize: pixels → network input.
        examples: members and pool images audited (each). shadows: shadow pipelines (0: none).
        shadow_epochs: epochs of each shadow network. iterations: the shadows' distillation
            budget (default: the set's own ``extra["iterations"]``). art: also run ART's
            membership attacks (:func:`art_membership`).

    Returns:
        ``{"threshold": metrics, "lira_offline": metrics or None, "roc": {...}, settings...}``;
        with ``art``, also ``art_rule_based`` and ``art_black_box`` metrics.

    Raises:
        ConfigError: the set has no audit split, or it does not match ``real``.
    """
    from ddkit.api import distill
    from ddkit.evaluate import train_networks

    split = ds.extra.get("audit_split")
    if not isinstance(split, dict) or "seed" not in split:
        raise ConfigError("membership inference needs a set distilled with an audit split (ddkit distill "
                          "--audit-split SEED): only then are its members and non-members known")
    if split.get("train_size") != len(real) or split.get("dataset") != real.name:
        raise ConfigError(f"the set's audit split is of {split.get('dataset')} with {split.get('train_size')} images, "
                          f"not of {real.name} with {len(real)}")
    t0 = time.perf_counter()
    members, pool = member_split(len(real), split["seed"])
    g = torch.Generator().manual_seed(seed)
    m = members[torch.randperm(len(members), generator=g)[:examples]]
    nm = pool[torch.randperm(len(pool), generator=g)[:examples]]
    idx = torch.cat([m, nm])
    is_member = np.r_[np.ones(len(m), bool), np.zeros(len(nm), bool)]
    images, labels = real.float_images(idx), real.labels[idx]
    target = _scores(nets, images, labels, normalize)
    result: dict[str, Any] = {"threshold": vars(attack_metrics(target, is_member)), "lira_offline": None,
                              "examples": int(len(idx)), "shadows": shadows}
    roc = {"threshold": _roc(target, is_member)}
    if art:
        result.update(art_membership(nets, images, labels, is_member, normalize, len(real.class_names), seed=seed))
    if shadows > 0:
        cfg = dict(ds.config)
        its = iterations if iterations is not None else ds.extra.get("iterations")
        shadow_scores, shadow_in = [], []
        for s in range(shadows):
            gs = torch.Generator().manual_seed(seed * 1000 + s + 1)
            half = pool[torch.randperm(len(pool), generator=gs)[: len(pool) // 2]]
            sub = real.subset(half)
            cfg.pop("iterations", None)
            shadow_set = distill(sub, ds.method, ds.ipc, iterations=its, config=cfg, seed=seed + s + 1,
                                 device=device, progress=False)
            snets = train_networks(shadow_set, runs=1, epochs=shadow_epochs, seed=seed + s + 1, device=device,
                                   protocol="hard").networks
            shadow_scores.append(_scores(snets, images, labels, normalize))
            shadow_in.append(np.isin(idx.numpy(), half.numpy()))
        sc, sin = np.stack(shadow_scores), np.stack(shadow_in)
        from ddkit.audit.mia import lira_offline_masked

        keep = (~sin).any(0)  # pool images that every shadow saw have no OUT score: left out
        lira = lira_offline_masked(target[keep], sc[:, keep], ~sin[:, keep])
        result["lira_offline"] = vars(attack_metrics(lira, is_member[keep]))
        result["lira_examples"] = int(keep.sum())
        roc["lira_offline"] = _roc(lira, is_member[keep])
    result["roc"] = roc
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _roc(scores: np.ndarray, is_member: np.ndarray) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_member, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
    return {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()}
