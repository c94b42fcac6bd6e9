"""``ddkit audit``: privacy, robustness and fairness of a distilled set, beside baselines.

Networks are trained on the distilled set with the evaluation protocol
(:func:`ddkit.evaluate.train_networks`, ``runs`` of them) and, the same way, on a random real
subset of the set's size (drawn from the members when the set has an audit split) and,
with ``full_baseline``, on the full real training set (``baseline_epochs``). Each part:

* privacy (:mod:`ddkit.audit.privacy`): threshold attack and LiRA offline (``shadows``);
  with ``art_mia``, ART's rule-based and black-box membership attacks beside them;
* robustness (:mod:`ddkit.audit.robustness`): clean, FGSM/PGD (and, when ``attacks``
  includes ``autoattack``, AutoAttack) accuracy per ε, corruption
  accuracy per corruption and severity on ``test_images`` test images (``glass_blur`` takes
  ~12 s per image in imagecorruptions and is left out unless listed);
* fairness (:mod:`ddkit.audit.fairness`): per-class figures, against the full-data networks
  when they were trained, else against the random subset's.

:func:`write_report` writes ``audit.json`` and one self-contained ``report.html`` (figures
embedded as PNG, no external resources), with every setting and each part's time.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddkit.artifact import DistilledSet
from ddkit.audit.fairness import fairness
from ddkit.audit.robustness import ATTACKS, CORRUPTIONS, adversarial_accuracy, corrupt_grid, corruption_accuracy
from ddkit.errors import ConfigError
from ddkit.utils import atomic_path

__all__ = ["PARTS", "audit", "write_report"]

PARTS = ("privacy", "robustness", "fairness")
DEFAULT_CORRUPTIONS = tuple(c for c in CORRUPTIONS if c != "glass_blur")


def _per_class(nets, test, normalize, k: int) -> np.ndarray:
    from ddkit.train import confusion

    rows = []
    for net in nets:
        conf = confusion(net, test.images, test.labels, k, normalize=normalize).double()
        rows.append((conf.diag() / conf.sum(1).clamp_min(1)).numpy())
    return np.stack(rows)


def audit(distilled: DistilledSet | str | Path, *, parts: tuple[str, ...] = PARTS, model: str = "convnet",
          runs: int = 2, epochs: int | None = None, shadows: int = 0, shadow_epochs: int = 100,
          examples: int = 2000, attacks: tuple[str, ...] = ("fgsm", "pgd"),
          eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255), corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS,
          severities: tuple[int, ...] = (1, 2, 3, 4, 5), test_images: int = 1000, full_baseline: bool = False,
          baseline_epochs: int = 20, seed: int = 0, device: str | torch.device = "auto",
          data_root: str | Path | None = None, download: bool = False, art_mia: bool = False) -> dict[str, Any]:
    """Audit a distilled set (see the module docstring); returns the JSON-ready result.

    ``attacks``: a subset of ``fgsm``, ``pgd``, ``autoattack`` (slow: off by default).
    ``art_mia``: ART's membership attacks beside the threshold attack and LiRA.

    Raises:
        ConfigError: an unknown part, privacy asked for a set without an audit split, an
            unknown attack or corruption, ε out of (0, 1], counts out of range.
        ArtifactError, DatasetNotFoundError: a bad file, data not found.
    """
    from ddkit.data import load_dataset
    from ddkit.evaluate import train_networks
    from ddkit.evaluate.cross import random_subset

    t_all = time.perf_counter()
    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"unknown audit parts {unknown or parts}; choose from {', '.join(PARTS)}")
    if "privacy" in parts and "audit_split" not in ds.extra:
        raise ConfigError("the privacy part needs a set distilled with an audit split (ddkit distill --audit-split "
                          "SEED); audit the other parts with --parts robustness,fairness")
    if any(not 0 < e <= 1 for e in eps):
        raise ConfigError(f"ε must be in (0, 1] pixel units, got {list(eps)}")
    bad_attacks = [a for a in attacks if a not in ATTACKS]
    bad_corr = [c for c in corruptions if c not in CORRUPTIONS]
    if bad_attacks or bad_corr:
        raise ConfigError(f"unknown attacks {bad_attacks} / corruptions {bad_corr}")
    if min(runs, examples, test_images, baseline_epochs) < 1 or shadows < 0:
        raise ConfigError("runs, examples, test images and baseline epochs must be ≥ 1, shadows ≥ 0")
    real = load_dataset(ds.dataset, "train", data_root=data_root, download=download)
    test = load_dataset(ds.dataset, "test", data_root=data_root, download=download)
    k = ds.num_classes
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    kw = {"model": model, "runs": runs, "epochs": epochs, "seed": seed, "device": device, "protocol": "hard"}
    target = train_networks(ds, **kw)
    pool_for_random = real
    if "audit_split" in ds.extra:
        from ddkit.audit.privacy import member_split

        pool_for_random = real.subset(member_split(len(real), ds.extra["audit_split"]["seed"])[0])
    rnd = random_subset(ds, pool_for_random, seed)
    rnd = DistilledSet(**{**rnd.__dict__, "teacher": None, "teacher_info": None})
    base = {"random": train_networks(rnd, **kw)}
    if full_baseline:
        full = DistilledSet(images=real.float_images(), labels=real.labels, method="full", dataset=real.name,
                            mean=real.mean, std=real.std, class_names=list(real.class_names), ipc=1, seed=seed)
        base["full"] = train_networks(full, **{**kw, "epochs": baseline_epochs})
    timings["training"] = round(time.perf_counter() - t0, 2)
    result: dict[str, Any] = {"set": {"method": ds.method, "dataset": ds.dataset, "ipc": ds.ipc, "seed": ds.seed,
                                      "images": int(ds.images.shape[0]), "label_kind": ds.label_kind},
                              "settings": {"parts": list(parts), "model": model, "runs": runs,
                                           "epochs": target.epochs, "protocol": target.protocol, "shadows": shadows,
                                           "shadow_epochs": shadow_epochs, "examples": examples,
                                           "attacks": list(attacks), "eps": list(eps),
                                           "corruptions": list(corruptions), "severities": list(severities),
                                           "test_images": test_images, "full_baseline": full_baseline,
                                           "baseline_epochs": baseline_epochs, "seed": seed,
                                           "art_mia": art_mia},
                              "baselines": sorted(base)}
    if "privacy" in parts:
        from ddkit.audit.privacy import membership_audit

        t0 = time.perf_counter()
        result["privacy"] = {"distilled": membership_audit(ds, real, target.networks, target.normalize,
                                                           examples=examples, shadows=shadows,
                                                           shadow_epochs=shadow_epochs, seed=seed, device=device,
                                                           art=art_mia)}
        rnd_audit = DistilledSet(**{**rnd.__dict__, "extra": {"audit_split": ds.extra["audit_split"]}})
        result["privacy"]["random"] = membership_audit(rnd_audit, real, base["random"].networks,
                                                       base["random"].normalize, examples=examples, seed=seed,
                                                       art=art_mia)
        timings["privacy"] = round(time.perf_counter() - t0, 2)
    sub = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:test_images])
    if "robustness" in parts:
        t0 = time.perf_counter()
        rob: dict[str, Any] = {}
        grid = corrupt_grid(sub.images, corruptions, severities, seed=seed)  # once: every network sees the same images
        for name, tr in [("distilled", target), *base.items()]:
            clean = _per_class(tr.networks, sub, tr.normalize, k).mean()
            adv = {f"{a}@{e:.4f}": float(np.mean([adversarial_accuracy(n, sub.images, sub.labels, ds.mean, ds.std,
                                                                        attack=a, eps=e, seed=seed)
                                                   for n in tr.networks]))
                   for a in attacks for e in eps}
            corr = [corruption_accuracy(n, sub.images, sub.labels, tr.normalize, corruptions=corruptions,
                                        severities=severities, corrupted=grid) for n in tr.networks]
            mean_corr = {c: {s: float(np.mean([r[c][s] for r in corr])) for s in severities} for c in corruptions}
            rob[name] = {"clean": float(clean), "adversarial": adv, "corruptions": mean_corr,
                         "corruption_mean": float(np.mean([v for c in mean_corr.values() for v in c.values()]))
                         if corruptions else None}
        result["robustness"] = rob
        timings["robustness"] = round(time.perf_counter() - t0, 2)
    if "fairness" in parts:
        t0 = time.perf_counter()
        ref_name = "full" if "full" in base else "random"
        pcs = {name: _per_class(tr.networks, test, tr.normalize, k) for name, tr in [("distilled", target),
                                                                                       *base.items()]}
        result["fairness"] = {"reference": ref_name,
                              **{name: fairness(pc, pcs[ref_name] if name != ref_name else None)
                                 for name, pc in pcs.items()}, "class_names": list(ds.class_names)}
        timings["fairness"] = round(time.perf_counter() - t0, 2)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    result["seconds"] = timings
    return result


def _png(fig) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figures(res: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    if "privacy" in res:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        for who, r in res["privacy"].items():
            for attack, roc in r["roc"].items():
                fpr, tpr = np.maximum(roc["fpr"], 1e-5), np.maximum(roc["tpr"], 1e-5)
                ax.plot(fpr, tpr, label=f"{who}: {attack} (AUC {r[attack]['auc']:.3f})")
        ax.plot([1e-5, 1], [1e-5, 1], "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7)
        ax.set_title("membership inference (ROC, log-log)")
        figs.append(("Membership inference", _png(fig)))
        plt.close(fig)
    if "robustness" in res:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for who, r in res["robustness"].items():
            keys = list(r["adversarial"])
            ax.plot(range(len(keys)), [100 * r["adversarial"][k] for k in keys], marker="o", label=who)
        ax.set_xticks(range(len(keys)), keys, rotation=30, fontsize=7)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("adversarial accuracy")
        ax.legend(fontsize=7)
        figs.append(("Adversarial robustness", _png(fig)))
        plt.close(fig)
    if "fairness" in res:
        f = res["fairness"]
        names = f["class_names"]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        whos = [w for w in f if isinstance(f[w], dict)]
        width = 0.8 / max(1, len(whos))
        for j, who in enumerate(whos):
            ax.bar(np.arange(len(names)) - 0.4 + width * (j + 0.5), [100 * v for v in f[who]["per_class"]], width,
                   label=who)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("per-class accuracy")
        ax.legend(fontsize=7)
        figs.append(("Class fairness", _png(fig)))
        plt.close(fig)
    return figs


def write_report(res: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and a self-contained ``report.html`` (figures embedded) into ``out_dir``.

    Raises:
        OutputError: the folder cannot be written.
    """
    out = Path(out_dir)
    js, page = out / "audit.json", out / "report.html"
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps(res, indent=2))
    s = res["set"]
    parts = [f"<h1>ddkit audit: {html.escape(s['method'])} IPC {s['ipc']} on {html.escape(s['dataset'])}</h1>",
             "<h2>Settings</h2><pre>" + html.escape(json.dumps(res["settings"], indent=1)) + "</pre>",
             "<h2>Time (s)</h2><pre>" + html.escape(json.dumps(res["seconds"], indent=1)) + "</pre>"]
    if "privacy" in res:
        rows = "".join(f"<tr><td>{html.escape(who)}</td><td>{html.escape(a)}</td><td>{m['auc']:.4f}</td>"
                       f"<td>{m['balanced_accuracy']:.4f}</td><td>{m['tpr_at_0_1pct_fpr']:.4f}</td>"
                       f"<td>{m['tpr_at_1pct_fpr']:.4f}</td></tr>"
                       for who, r in res["privacy"].items()
                       for a in ("threshold", "lira_offline", "art_rule_based", "art_black_box") if (m := r.get(a)))
        parts.append("<h2>Privacy: membership inference</h2><table border=1 cellpadding=4><tr><th>networks</th>"
                     "<th>attack</th><th>ROC AUC</th><th>balanced acc.</th><th>TPR@0.1% FPR</th>"
                     f"<th>TPR@1% FPR</th></tr>{rows}</table>")
    if "robustness" in res:

        def row(who: str, r: dict[str, Any]) -> str:
            cells = [f"{100 * r['clean']:.2f}", *(f"{100 * v:.2f}" for v in r["adversarial"].values()),
                     "" if r["corruption_mean"] is None else f"{100 * r['corruption_mean']:.2f}"]
            return f"<tr><td>{html.escape(who)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

        rows = "".join(row(who, r) for who, r in res["robustness"].items())
        first = next(iter(res["robustness"].values()))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in first["adversarial"])
        parts.append("<h2>Robustness (accuracy, %)</h2><table border=1 cellpadding=4><tr><th>networks</th>"
                     f"<th>clean</th>{head}<th>corruptions (mean)</th></tr>{rows}</table>")
    if "fairness" in res:
        f = res["fairness"]
        rows = "".join(f"<tr><td>{html.escape(w)}</td><td>{100 * v['std']:.2f}</td><td>{100 * v['worst']:.2f}</td>"
                       f"<td>{html.escape(f['class_names'][v['worst_class']])}</td><td>{100 * v['range']:.2f}</td>"
                       f"<td>{'—' if 'std_ratio' not in v else format(v['std_ratio'], '.3f')}</td></tr>"
                       for w, v in f.items() if isinstance(v, dict))
        parts.append(f"<h2>Fairness (reference: {html.escape(f['reference'])})</h2><table border=1 cellpadding=4>"
                     "<tr><th>networks</th><th>std across classes (pts)</th><th>worst class (%)</th><th>worst</th>"
                     f"<th>max − min (pts)</th><th>std ratio</th></tr>{rows}</table>")
    for title, png in _figures(res):
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>ddkit audit</title>"
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{text-align:right}</style>"
           "</head><body>" + "\n".join(parts) + "</body></html>")
    with atomic_path(page) as tmp:
        tmp.write_text(doc)
    return js, page
