"""Benchmark: working-likelihood SVR against SVR defaults, CV-tuned SVR and NuSVR.

Run ``python bench/svr.py`` (full: 10 repetitions) or ``python bench/svr.py --quick``
(2 repetitions, smaller test sets; for smoke testing). Writes ``bench/results/svr.json``
and ``bench/results/svr.md`` (or the paths given by ``--out``). ``python bench/svr.py
--only-distill`` reruns only the extra tables (KIP-distilled diabetes training sets, see
:func:`kip_distill_table`) and merges them into an existing svr.json/svr.md.

For each data set and repetition, one train/test split is drawn and every method is fitted
on the same training set; X is standardised by a ``StandardScaler`` inside a ``Pipeline``
for every method. Reported: test RMSE (against the noisy held-out y), for the simulations
also RMSE against the noiseless target f, and fit wall time (for ``GridSearchCV`` the whole
search including the refit), as mean ± std over repetitions.

Simulations (a reading of the paper's design; its exact settings were not available):
a linear target ``f(x) = x·1`` with ``x ~ U[-1, 1]^5`` and the nonlinear ``sinc`` target
``f(x) = sin(πx)/(πx)`` with ``x ~ U[-3, 3]``; noise ε-Laplacian (ε₀ = σ₀), normal or
uniform, with s.d. 0.3 or 1.0 times the s.d. of f (two noise levels).

Source of the method: Wu & Wang, Int. J. Mach. Learn. Cybern. (2022),
doi:10.1007/s13042-022-01672-x.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes, load_linnerud, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR, NuSVR

try:
    from ddkit.svr import WorkingLikelihoodSVR
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ddkit.svr import WorkingLikelihoodSVR

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# s.d. of the ε-insensitive Laplace density with ε = σ = 1: sqrt((1/3 + 1 + 2 + 2) / 2).
_EPS_LAPLACE_SD = float(np.sqrt((1.0 / 3.0 + 5.0) / 2.0))


# --------------------------------------------------------------------------- data sets
def noise(kind, sd, n, rng):
    """Draw ``n`` noise values of standard deviation ``sd`` (units of y).

    Parameters
    ----------
    kind : {'eps-laplace', 'normal', 'uniform'}
        'eps-laplace' is the ε-insensitive Laplace density with ε = σ (uniform centre of
        half-width ε with probability ε/(ε+σ), else ±(ε + Exponential(σ))).
    sd : float
        Standard deviation of the noise, > 0.
    n : int
        Number of draws.
    rng : numpy.random.Generator

    Returns
    -------
    e : ndarray of shape (n,)

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    """
    if kind == "normal":
        return rng.normal(scale=sd, size=n)
    if kind == "uniform":
        half = np.sqrt(3.0) * sd
        return rng.uniform(-half, half, size=n)
    if kind == "eps-laplace":
        eps = sig = sd / _EPS_LAPLACE_SD
        centre = rng.random(n) < eps / (eps + sig)
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        tail = sign * (eps + rng.exponential(sig, size=n))
        return np.where(centre, rng.uniform(-eps, eps, size=n), tail)
    raise ValueError(f"unknown noise kind {kind!r}")


def simulation(target, kind, level, n_train, n_test):
    """Return a loader for a simulated data set (see the module docstring).

    Parameters
    ----------
    target : {'linear', 'sinc'}
    kind : noise kind, see :func:`noise`
    level : float
        Noise s.d. as a multiple of the s.d. of the target over the input distribution.
    n_train, n_test : int
        Training and test sizes.

    Returns
    -------
    load : callable
        ``load(rng) -> (X_train, X_test, y_train, y_test, f_test)``; ``X`` of shape
        (n, d), ``y`` and ``f_test`` of shape (n,).
    """
    if target == "linear":
        d, f_sd = 5, float(np.sqrt(5.0 / 3.0))  # x ~ U[-1,1]^5, f = sum(x)

        def draw_x(n, rng):
            return rng.uniform(-1.0, 1.0, size=(n, d))

        def f(X):
            return X.sum(axis=1)

    elif target == "sinc":
        grid = np.linspace(-3.0, 3.0, 200001)
        f_sd = float(np.std(np.sinc(grid)))  # s.d. of sinc(x), x ~ U[-3, 3]

        def draw_x(n, rng):
            return rng.uniform(-3.0, 3.0, size=(n, 1))

        def f(X):
            return np.sinc(X[:, 0])

    else:
        raise ValueError(f"unknown target {target!r}")

    def load(rng):
        X_tr, X_te = draw_x(n_train, rng), draw_x(n_test, rng)
        f_tr, f_te = f(X_tr), f(X_te)
        y_tr = f_tr + noise(kind, level * f_sd, n_train, rng)
        y_te = f_te + noise(kind, level * f_sd, n_test, rng)
        return X_tr, X_te, y_tr, y_te, f_te

    return load


def real(name, n_train=None, n_test=None):
    """Return a loader for a regression data set shipped with scikit-learn.

    Parameters
    ----------
    name : {'diabetes', 'linnerud', 'friedman1'}
        'linnerud' uses its first target (Weight). 'friedman1' is *synthetic*
        (``make_friedman1``, noise s.d. 1) and uses ``n_train``/``n_test``.
    n_train, n_test : int, optional
        Sizes for 'friedman1'; the real sets use a random 75/25 split.

    Returns
    -------
    load : callable
        ``load(rng) -> (X_train, X_test, y_train, y_test, None)``.
    """

    def load(rng):
        seed = int(rng.integers(2**31 - 1))
        if name == "friedman1":
            X, y = make_friedman1(n_samples=n_train + n_test, noise=1.0, random_state=seed)
            return (*train_test_split(X, y, train_size=n_train, random_state=seed), None)
        if name == "diabetes":
            X, y = load_diabetes(return_X_y=True)
        elif name == "linnerud":
            X, Y = load_linnerud(return_X_y=True)
            y = Y[:, 0]
        else:
            raise ValueError(f"unknown data set {name!r}")
        return (*train_test_split(X, y, test_size=0.25, random_state=seed), None)

    return load


def datasets(n_train, n_test):
    """All benchmark data sets as ``(name, group, loader)``; see the module docstring."""
    out = []
    for target in ("linear", "sinc"):
        for kind in ("eps-laplace", "normal", "uniform"):
            for level in (0.3, 1.0):
                name = f"{target} / {kind} / {level:g}"
                out.append((name, "simulation", simulation(target, kind, level, n_train,
                                                           n_test)))
    out.append(("diabetes", "real", real("diabetes")))
    out.append(("linnerud (Weight)", "real", real("linnerud")))
    out.append(("friedman1 (synthetic)", "synthetic", real("friedman1", n_train, n_test)))
    return out


# --------------------------------------------------------------------------- methods
def _grid_search_svr(y_train):
    sd = float(np.std(y_train))
    grid = {
        "svr__C": [sd * c for c in (0.1, 1.0, 10.0, 100.0)],
        "svr__epsilon": [sd * e for e in (0.0, 0.05, 0.1, 0.2, 0.5)],
    }
    cv = KFold(n_splits=5, shuffle=True, random_state=0)
    return GridSearchCV(make_pipeline(StandardScaler(), SVR()), grid, cv=cv, n_jobs=1,
                        scoring="neg_root_mean_squared_error")


def _grid_search_wl(y_train):
    # C of WorkingLikelihoodSVR is relative to the estimated noise scale: no sd(y) factor.
    grid = {"workinglikelihoodsvr__C": [0.1, 1.0, 10.0, 100.0]}
    cv = KFold(n_splits=5, shuffle=True, random_state=0)
    return GridSearchCV(make_pipeline(StandardScaler(), WorkingLikelihoodSVR()), grid, cv=cv,
                        n_jobs=1, scoring="neg_root_mean_squared_error")


def _std_y(model):
    return TransformedTargetRegressor(regressor=model, transformer=StandardScaler())


# name -> factory(y_train) -> unfitted estimator. X is standardised in every pipeline.
METHODS = {
    "WL-SVR (ours, defaults: C=1)": lambda y: make_pipeline(StandardScaler(),
                                                            WorkingLikelihoodSVR()),
    "WL-SVR (ours, C=10)": lambda y: make_pipeline(StandardScaler(),
                                                   WorkingLikelihoodSVR(C=10.0)),
    "WL-SVR (ours, C=1, cv=5 residuals)": lambda y: make_pipeline(
        StandardScaler(), WorkingLikelihoodSVR(cv=5, random_state=0)),
    "WL-SVR (ours), C by 5-fold CV": _grid_search_wl,
    "SVR() defaults": lambda y: make_pipeline(StandardScaler(), SVR()),
    "SVR() defaults, y standardised": lambda y: _std_y(make_pipeline(StandardScaler(),
                                                                     SVR())),
    "SVR, C & ε by 5-fold CV": _grid_search_svr,
    "NuSVR() defaults": lambda y: make_pipeline(StandardScaler(), NuSVR()),
    "NuSVR() defaults, y standardised": lambda y: _std_y(make_pipeline(StandardScaler(),
                                                                       NuSVR())),
}

# Hook for later steps: extra result tables, each a callable
# ``table(args) -> (title, rows)`` with ``rows`` a list of dicts with the keys of the main
# table (dataset, method, rmse_mean, rmse_std, fit_s_mean, fit_s_std).
EXTRA_TABLES: list = []

# KIP-distilled diabetes training sets (issue 4, last point): sizes and KIP settings.
KIP_SIZES = (20, 40)
KIP_SETTINGS = {"kernel": "rbf", "reg": 1e-6, "iterations": 300, "lr": 0.01}


def _rmse(pred, y):
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def kip_distill_table(args):
    """WL-SVR fitted on KIP-distilled vs random vs all diabetes training rows.

    For each repetition ``r`` the diabetes split of the main table is drawn
    (``numpy.random.default_rng([seed, r])``, random 75/25 split: 331 training, 111 test
    rows). For each m in :data:`KIP_SIZES` the training set is distilled to m rows with
    :func:`ddkit.tabular.kip_tabular` (:data:`KIP_SETTINGS`: RBF kernel with the
    median-heuristic bandwidth, λ = 1e-6 trace-scaled ridge, 300 full-batch Adam steps at
    lr 0.01, learned X and y, seed r), and ``WorkingLikelihoodSVR()`` (defaults, X
    standardised in a Pipeline) is fitted on (a) the m distilled rows, (b) m random
    training rows (drawn from the same rng), (c) all training rows. As a reference, the KRR
    predictor KIP optimises (same kernel and ridge; the distilled rows, and the random rows,
    as support) is also scored. torch runs single-threaded here (much faster for these tiny problems on a
    shared CPU).

    Parameters
    ----------
    args : argparse.Namespace
        Uses ``reps`` (``args.reps`` or 10) and ``seed``.

    Returns
    -------
    title : str
    rows : list of dict
        ``dataset``, ``method``, ``reps``, ``rmse_mean``/``rmse_std`` (test RMSE, units of
        y), ``fit_s_mean``/``fit_s_std`` (seconds: the SVR fit; for KIP rows the
        distillation time is in ``distill_s_*``), ``m``.
    """
    import torch

    from ddkit.spectral.loss import krr_predict_kernel
    from ddkit.tabular import kip_tabular, median_bandwidth, rbf_kernel

    reps = args.reps if args.reps is not None else 10
    load = real("diabetes")
    rec = {}

    def add(name, m, rmse, fit_s, distill_s=None):
        r = rec.setdefault(name, {"m": m, "rmse": [], "fit_s": [], "distill_s": []})
        r["rmse"].append(rmse)
        r["fit_s"].append(fit_s)
        if distill_s is not None:
            r["distill_s"].append(distill_s)

    def wl_fit(X, y):
        est = make_pipeline(StandardScaler(), WorkingLikelihoodSVR())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(X, y)
        return est, time.perf_counter() - t0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rep in range(reps):
            rng = np.random.default_rng([args.seed, rep])
            X_tr, X_te, y_tr, y_te, _ = load(rng)
            est, dt = wl_fit(X_tr, y_tr)
            add(f"WL-SVR on all training rows ({len(y_tr)})", len(y_tr), _rmse(est.predict(X_te), y_te), dt)
            for m in KIP_SIZES:
                t0 = time.perf_counter()
                X_s, y_s = kip_tabular(X_tr, y_tr, m, seed=rep, **KIP_SETTINGS)
                dist_s = time.perf_counter() - t0
                est, dt = wl_fit(X_s, y_s)
                add(f"WL-SVR on {m} KIP rows", m, _rmse(est.predict(X_te), y_te), dt, dist_s)
                idx = rng.choice(len(y_tr), m, replace=False)
                est, dt = wl_fit(X_tr[idx], y_tr[idx])
                add(f"WL-SVR on {m} random rows", m, _rmse(est.predict(X_te), y_te), dt)
                # reference: the KRR predictor KIP optimises (standardised units), on the KIP
                # rows and on the random rows
                mx, sx = X_tr.mean(0), X_tr.std(0)
                my, sy = y_tr.mean(), y_tr.std()
                h = median_bandwidth(torch.as_tensor((X_tr - mx) / sx))
                for label, (Xa, ya) in (("KIP", (X_s, y_s)), ("random", (X_tr[idx], y_tr[idx]))):
                    a, b = (torch.as_tensor((v - mx) / sx) for v in (Xa, X_te))
                    kss = rbf_kernel(a, a, h)
                    ridge = KIP_SETTINGS["reg"] * float(torch.trace(kss)) / m
                    t0 = time.perf_counter()
                    pred = krr_predict_kernel(rbf_kernel(b, a, h), kss, torch.as_tensor((ya - my) / sy)[:, None],
                                              ridge)
                    dt = time.perf_counter() - t0
                    add(f"(reference) KRR on {m} {label} rows", m, _rmse(pred[:, 0].numpy() * sy + my, y_te), dt)
    finally:
        torch.set_num_threads(threads)
    order = [n for n in rec if n.startswith("WL-SVR on all")]
    for m in KIP_SIZES:
        order += [n for n in rec if n.endswith((f" {m} KIP rows", f" {m} random rows"))]
    rows = []
    for name in order:
        r = rec[name]
        row = {"dataset": "diabetes", "method": name, "m": r["m"], "reps": reps}
        for key in ("rmse", "fit_s", "distill_s"):
            if r[key]:
                row[f"{key}_mean"] = float(np.mean(r[key]))
                row[f"{key}_std"] = float(np.std(r[key]))
        rows.append(row)
    title = (f"KIP-distilled diabetes training sets (WorkingLikelihoodSVR, test RMSE, {reps} splits; "
             f"kip_tabular {KIP_SETTINGS})")
    return title, rows


EXTRA_TABLES.append(kip_distill_table)


# --------------------------------------------------------------------------- running
def _wl_step(est):
    """The WorkingLikelihoodSVR inside a fitted pipeline or search, or None."""
    est = getattr(est, "best_estimator_", est)
    if hasattr(est, "steps"):
        last = est.steps[-1][1]
        return last if isinstance(last, WorkingLikelihoodSVR) else None
    return None


def run_dataset(name, load, reps, seed):
    """Fit every method of ``METHODS`` ``reps`` times on one data set.

    Parameters
    ----------
    name : str
        Data-set label for the rows.
    load : callable
        ``load(rng) -> (X_train, X_test, y_train, y_test, f_test or None)``.
    reps : int
        Repetitions; repetition ``r`` draws its split/data with
        ``numpy.random.default_rng([seed, r])``, shared by all methods.
    seed : int

    Returns
    -------
    rows : list of dict
        One per method: ``rmse_mean``/``rmse_std`` (units of y; test RMSE against the
        noisy y), ``rmse_f_*`` (against the noiseless f, simulations only), ``fit_s_*``
        (seconds), and for WL-SVR methods ``eps_*``, ``sigma_*`` (as multiples of
        sd(y_train)), ``n_iter_*``, ``n_sv_*`` and ``convergence_warnings`` (a count).
    """
    rec = {m: {"rmse": [], "rmse_f": [], "fit_s": [], "eps": [], "sigma": [], "n_iter": [],
               "n_sv": [], "warn": 0} for m in METHODS}
    for rep in range(reps):
        rng = np.random.default_rng([seed, rep])
        X_tr, X_te, y_tr, y_te, f_te = load(rng)
        for m, factory in METHODS.items():
            est = factory(y_tr)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                t0 = time.perf_counter()
                est.fit(X_tr, y_tr)
                dt = time.perf_counter() - t0
            pred = est.predict(X_te)
            r = rec[m]
            r["rmse"].append(float(np.sqrt(np.mean((pred - y_te) ** 2))))
            if f_te is not None:
                r["rmse_f"].append(float(np.sqrt(np.mean((pred - f_te) ** 2))))
            r["fit_s"].append(dt)
            r["warn"] += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            wl = _wl_step(est)
            if wl is not None:
                sd_y = float(np.std(y_tr))
                r["eps"].append(wl.epsilon_ / sd_y)
                r["sigma"].append(wl.sigma_ / sd_y)
                r["n_iter"].append(wl.n_iter_)
                r["n_sv"].append(wl.n_support_)
    rows = []
    for m, r in rec.items():
        row = {"dataset": name, "method": m, "reps": reps,
               "convergence_warnings": r["warn"]}
        for key in ("rmse", "rmse_f", "fit_s", "eps", "sigma", "n_iter", "n_sv"):
            if r[key]:
                row[f"{key}_mean"] = float(np.mean(r[key]))
                row[f"{key}_std"] = float(np.std(r[key]))
        rows.append(row)
    return rows


def _pm(row, key, fmt):
    if f"{key}_mean" not in row:
        return ""
    return f"{row[f'{key}_mean']:{fmt}} ± {row[f'{key}_std']:{fmt}}"


def _fmt_num(x):
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def to_markdown(meta, rows, extra):
    """Render the results as a markdown document.

    Parameters
    ----------
    meta : dict
        Run metadata (command, date, machine, versions, sizes, wall time).
    rows : list of dict
        As returned by :func:`run_dataset`, concatenated.
    extra : list of (str, list of dict)
        Extra tables from ``EXTRA_TABLES`` (title, rows).

    Returns
    -------
    md : str
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    by = {(r["dataset"], r["method"]): r for r in rows}
    lines = [
        "# WorkingLikelihoodSVR benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['platform']}, {meta['cpu_count']} CPUs (shared), "
        f"Python {meta['python']}",
        f"- scikit-learn {meta['sklearn']}, numpy {meta['numpy']}",
        f"- repetitions: {meta['reps']} (mean ± std over repetitions); wall time "
        f"{meta['wall_s']:.0f} s",
        f"- sizes: simulations and friedman1 n_train = {meta['n_train']}, n_test = "
        f"{meta['n_test']}; diabetes (442 rows) and linnerud (20 rows) random 75/25 splits",
        "- X standardised (StandardScaler in a Pipeline) for every method. Simulation "
        "names: target / noise / noise s.d. as a multiple of the signal s.d. "
        "friedman1 is synthetic (`make_friedman1`, noise 1).",
        "- Methods: *WL-SVR* is `ddkit.svr.WorkingLikelihoodSVR` (in-sample residuals "
        "unless *cv=5 residuals*: out-of-fold residuals of a 5-fold split); *WL-SVR, C by "
        "5-fold CV* is GridSearchCV over its C ∈ {0.1, 1, 10, 100} (C is in noise units) "
        "with ε still from the working likelihood; *y standardised* wraps the model in "
        "TransformedTargetRegressor(StandardScaler()); *SVR, C & ε by 5-fold CV* is "
        "GridSearchCV over C ∈ sd(y)·{0.1, 1, 10, 100} × ε ∈ sd(y)·{0, 0.05, 0.1, 0.2, "
        "0.5} (20 candidates), 5-fold shuffled KFold, RMSE scoring. Best mean in bold.",
        "- ConvergenceWarnings (last table) are counted over all repetitions and, for the "
        "GridSearchCV method, over all its inner fits.",
        "",
        "## Test RMSE (held-out noisy y)",
        "",
        "| data set | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for n in names:
        cells = []
        best = min(by[(n, m)]["rmse_mean"] for m in methods)
        for m in methods:
            r = by[(n, m)]
            txt = f"{_fmt_num(r['rmse_mean'])} ± {_fmt_num(r['rmse_std'])}"
            cells.append(f"**{txt}**" if r["rmse_mean"] == best else txt)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    sims = [n for n in names if "rmse_f_mean" in by[(n, methods[0])]]
    if sims:
        lines += ["", "## Simulations: RMSE against the noiseless target f", "",
                  "| data set | " + " | ".join(methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for n in sims:
            best = min(by[(n, m)]["rmse_f_mean"] for m in methods)
            cells = []
            for m in methods:
                r = by[(n, m)]
                txt = f"{_fmt_num(r['rmse_f_mean'])} ± {_fmt_num(r['rmse_f_std'])}"
                cells.append(f"**{txt}**" if r["rmse_f_mean"] == best else txt)
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Fit time (s, mean ± std)", "",
              "| data set | " + " | ".join(methods) + " |",
              "|---" * (len(methods) + 1) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_pm(by[(n, m)], "fit_s", ".3f")
                                              for m in methods) + " |")
    wl = [m for m in methods if by[(names[0], m)].get("eps_mean") is not None]
    if wl:
        lines += ["", "## WL-SVR fitted values (ε and σ as multiples of sd(y_train))", "",
                  "| data set | method | ε/sd(y) | σ/sd(y) | rounds | support vectors | "
                  "ConvergenceWarnings |", "|---|---|---|---|---|---|---|"]
        for n in names:
            for m in wl:
                r = by[(n, m)]
                lines.append(f"| {n} | {m} | {_pm(r, 'eps', '.3f')} | "
                             f"{_pm(r, 'sigma', '.3f')} | {_pm(r, 'n_iter', '.1f')} | "
                             f"{_pm(r, 'n_sv', '.0f')} | {r['convergence_warnings']} |")
    if extra and meta.get("extra_tables_command"):
        lines += ["", f"Extra tables below written by `{meta['extra_tables_command']}` on "
                  f"{meta['extra_tables_date']} ({meta['extra_tables_wall_s']:.0f} s)."]
    for title, extra_rows in extra:
        distill = any("distill_s_mean" in r for r in extra_rows)
        lines += ["", f"## {title}", "", "| data set | method | test RMSE | fit time (s) |"
                  + (" distillation time (s) |" if distill else ""),
                  "|---|---|---|---|" + ("---|" if distill else "")]
        for r in extra_rows:
            lines.append(f"| {r['dataset']} | {r['method']} | {_pm(r, 'rmse', '.4g')} | "
                         f"{_pm(r, 'fit_s', '.3f')} |" + (f" {_pm(r, 'distill_s', '.2f')} |" if distill else ""))
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Run the benchmark (see the module docstring) and write svr.json and svr.md.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    results : dict
        ``{"meta": ..., "rows": ..., "extra_tables": ...}`` as written to svr.json.

    Raises
    ------
    OSError
        If the output directory cannot be written.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 10; 2 "
                   "with --quick)")
    p.add_argument("--quick", action="store_true", help="2 reps, n_test 300: smoke test")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-test", type=int, default=None, help="default 1000 (300 --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="directory for svr.json and svr.md")
    p.add_argument("--only-distill", action="store_true",
                   help="recompute only the extra tables (KIP-distilled diabetes) and merge them into an "
                   "existing svr.json in --out, keeping its main rows and metadata")
    args = p.parse_args(argv)
    if args.only_distill:
        return _only_extra(args, argv)
    reps = args.reps if args.reps is not None else (2 if args.quick else 10)
    n_test = args.n_test if args.n_test is not None else (300 if args.quick else 1000)

    t0 = time.perf_counter()
    rows = []
    for name, _group, load in datasets(args.n_train, n_test):
        t1 = time.perf_counter()
        rows.extend(run_dataset(name, load, reps, args.seed))
        print(f"{name}: {time.perf_counter() - t1:.1f} s", flush=True)
    extra = [table(args) for table in EXTRA_TABLES]
    meta = {
        "command": " ".join(["python bench/svr.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "reps": reps,
        "n_train": args.n_train,
        "n_test": n_test,
        "seed": args.seed,
        "wall_s": time.perf_counter() - t0,
    }
    results = {"meta": meta, "rows": rows,
               "extra_tables": [{"title": t, "rows": r} for t, r in extra]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "svr.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "svr.md").write_text(to_markdown(meta, rows, extra))
    print(f"wrote {args.out / 'svr.json'} and {args.out / 'svr.md'} "
          f"({meta['wall_s']:.0f} s)")
    return results


def _only_extra(args, argv):
    """``--only-distill``: rerun the ``EXTRA_TABLES`` and merge them into ``--out``/svr.json.

    Raises
    ------
    FileNotFoundError
        If ``--out`` has no svr.json from a full run.
    """
    path = args.out / "svr.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the full benchmark once first")
    results = json.loads(path.read_text())
    t0 = time.perf_counter()
    extra = [table(args) for table in EXTRA_TABLES]
    meta = results["meta"]
    meta["extra_tables_command"] = " ".join(["python bench/svr.py",
                                             *(sys.argv[1:] if argv is None else argv)])
    meta["extra_tables_date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta["extra_tables_wall_s"] = time.perf_counter() - t0
    results["extra_tables"] = [{"title": t, "rows": r} for t, r in extra]
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "svr.md").write_text(to_markdown(meta, results["rows"], extra))
    print(f"updated the extra tables of {path} and svr.md ({meta['extra_tables_wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
