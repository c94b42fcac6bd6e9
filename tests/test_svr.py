"""Tests of ddkit.svr: the working-likelihood SVR (issue 4).

Population values used below (noise of standard deviation τ; derivation in
``WorkingLikelihoodSVR``'s Notes): the working likelihood
``p(r) = exp(-|r|_ε/σ) / (2(ε+σ))`` is maximised, in the limit n → ∞, where
``σ = E(|r| - ε | |r| > ε)`` and ``P(|r| > ε) = σ / (ε + σ)``. This gives

* Laplace(scale b): the mean excess of an exponential is b for every ε, and
  ``exp(-ε/b) = b/(ε+b)`` only at ε = 0, so ε = 0, σ = b;
* normal(τ): solved numerically (scipy brentq in ``test_normal_population_values``),
  ε = 0.8485 τ, σ = 0.5567 τ;
* uniform(-a, a): the likelihood is largest in the uniform limit ε = a, σ = 0, where the
  density is exactly the uniform one.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.utils.estimator_checks import check_estimator

from ddkit.svr import WorkingLikelihoodSVR, working_density_sd, working_likelihood_fit

NORMAL_EPS = 0.8485  # population ε / τ for normal noise (see module docstring)
NORMAL_SIGMA = 0.5567  # population σ / τ for normal noise


def _profile_nll(eps, abs_r):
    """-log working likelihood at ε with σ profiled out (closed form), brute force."""
    n = abs_r.size
    s = np.maximum(abs_r - eps, 0.0).sum()
    sig = (s + np.sqrt(s * s + 4 * n * s * eps)) / (2 * n)
    return n * np.log(2 * (eps + sig)) + (s / sig if sig > 0 else 0.0)


def _regression(noise, n=2000, seed=0):
    """1-D smooth target 2x on U[-1, 1] plus the given noise draws."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n, 1))
    return X, 2.0 * X[:, 0] + noise(rng, n)


# ----------------------------------------------------------------- scikit-learn API
def test_check_estimator():
    check_estimator(WorkingLikelihoodSVR())


def test_check_estimator_cv_option():
    check_estimator(WorkingLikelihoodSVR(cv=3, random_state=0))


# ----------------------------------------------------------------- the likelihood step
@pytest.mark.parametrize("law", ["normal", "laplace", "uniform", "tiny"])
def test_working_likelihood_fit_is_global_maximum(law):
    rng = np.random.default_rng(1)
    r = {
        "normal": lambda: rng.normal(size=400),
        "laplace": lambda: rng.laplace(size=400),
        "uniform": lambda: rng.uniform(-1, 1, size=400),
        "tiny": lambda: np.array([0.1, -0.5, 2.0, 0.0, 0.5]),
    }[law]()
    a = np.abs(r)
    eps, sig, nll = working_likelihood_fit(r)
    # consistent with the closed form for σ and the profile at the returned ε
    assert nll == pytest.approx(_profile_nll(eps, a), rel=1e-9, abs=1e-9)
    s = np.maximum(a - eps, 0.0).sum()
    assert a.size * sig**2 - s * sig - s * eps == pytest.approx(0.0, abs=1e-9 * a.size)
    # no point of a fine grid, nor any breakpoint, nor a bounded 1-D search does better
    grid = np.concatenate([np.linspace(0, 1.05 * a.max(), 4001), a])
    assert nll <= min(_profile_nll(e, a) for e in grid) + 1e-9
    res = optimize.minimize_scalar(_profile_nll, bounds=(0, a.max()), args=(a,),
                                   method="bounded")
    assert nll <= res.fun + 1e-9
    # the profile is concave between breakpoints, so the maximiser is 0 or some |r_i|
    assert eps == 0.0 or eps in set(a)


def test_working_likelihood_fit_uniform_limit_is_a_breakpoint():
    # For bounded residuals the maximum is the uniform limit ε = max|r|, σ = 0: a kink of
    # the profile, which a smooth 1-D search would only approach.
    r = np.random.default_rng(2).uniform(-1, 1, size=500)
    eps, sig, _ = working_likelihood_fit(r)
    assert eps == np.abs(r).max()
    assert sig == 0.0


def test_working_likelihood_fit_errors():
    with pytest.raises(ValueError):
        working_likelihood_fit([])
    with pytest.raises(ValueError):
        working_likelihood_fit([0.0, np.nan])


@pytest.mark.parametrize("eps,sig", [(0.0, 1.0), (1.0, 0.0), (0.7, 0.3), (2.0, 0.5)])
def test_working_density_sd_matches_integration(eps, sig):
    def dens(r):
        return np.exp(-max(0.0, abs(r) - eps) / sig) if sig > 0 else float(abs(r) <= eps)

    norm = 2 * (eps + sig)
    hi = eps + 60 * sig
    pts = [eps] if eps > 0 else None
    mass = integrate.quad(dens, 0, hi, points=pts)[0] * 2 / norm
    var = integrate.quad(lambda r: r * r * dens(r), 0, hi, points=pts)[0] * 2 / norm
    assert mass == pytest.approx(1.0, rel=1e-7)
    assert working_density_sd(eps, sig) == pytest.approx(np.sqrt(var), rel=1e-7)


def test_normal_population_values():
    # the constants used in the noise tests below: solve the population equations
    def gap(t):
        p = 2 * stats.norm.sf(t)
        sig = 2 * (stats.norm.pdf(t) - t * stats.norm.sf(t)) / p
        return p - sig / (t + sig)

    t = optimize.brentq(gap, 0.2, 2.0)
    sig = 2 * (stats.norm.pdf(t) - t * stats.norm.sf(t)) / (2 * stats.norm.sf(t))
    assert t == pytest.approx(NORMAL_EPS, abs=1e-4)
    assert sig == pytest.approx(NORMAL_SIGMA, abs=1e-4)


# ----------------------------------------------------------------- known noise, n = 2000
# Tolerances: over 300 pure-noise samples of n = 2000 the s.d. of the maximiser was
# 0.026 b for σ (Laplace), 0.027 τ for σ and 0.069 τ for ε (normal); ε for Laplace noise
# is mean 0.06 b, s.d. 0.066 b (the maximum sits on the boundary ε = 0). Each tolerance is
# about 4 of those s.d. plus a few percent for in-sample residuals being slightly smaller
# than the noise (a smooth 1-D fit on 2000 points; C = 10 so the fit is not biased).
def test_laplace_noise_sigma():
    b = 0.2
    X, y = _regression(lambda rng, n: rng.laplace(scale=b, size=n))
    m = WorkingLikelihoodSVR(C=10.0).fit(X, y)
    assert m.sigma_ == pytest.approx(b, rel=0.12)
    assert 0.0 <= m.epsilon_ <= 0.4 * b
    assert m.converged_


def test_normal_noise_sigma():
    tau = 0.2
    X, y = _regression(lambda rng, n: rng.normal(scale=tau, size=n))
    m = WorkingLikelihoodSVR(C=10.0).fit(X, y)
    assert m.sigma_ == pytest.approx(NORMAL_SIGMA * tau, abs=0.12 * tau)
    assert m.epsilon_ == pytest.approx(NORMAL_EPS * tau, abs=0.3 * tau)
    # the standardising scale is the working-density s.d., ≈ 1.025 τ for normal noise
    assert m.scale_ == pytest.approx(1.025 * tau, rel=0.12)


def test_uniform_noise_sigma():
    # σ → 0 and ε → a. The sample maximiser is ε = max|r_i| of the in-sample residuals,
    # which is within a few percent below a (1 - 1/n for the noise alone, minus what the
    # fit absorbs); σ over 300 pure-noise samples never exceeded 0.004 a.
    a = 0.3
    X, y = _regression(lambda rng, n: rng.uniform(-a, a, size=n))
    m = WorkingLikelihoodSVR(C=10.0).fit(X, y)
    assert m.sigma_ <= 0.05 * a
    assert m.epsilon_ == pytest.approx(a, rel=0.06)


def test_cv_residuals_normal_noise():
    tau = 0.2
    X, y = _regression(lambda rng, n: rng.normal(scale=tau, size=n), n=1000, seed=3)
    m = WorkingLikelihoodSVR(C=10.0, cv=3, random_state=0).fit(X, y)
    # n = 1000: sampling s.d. are √2 times those at n = 2000; tolerances as above ×1.4
    assert m.sigma_ == pytest.approx(NORMAL_SIGMA * tau, abs=0.17 * tau)
    assert m.epsilon_ == pytest.approx(NORMAL_EPS * tau, abs=0.42 * tau)


# ----------------------------------------------------------------- invariance
@pytest.mark.parametrize("solver_tol,rel_tol", [(1e-3, 2e-2), (1e-7, 1e-5)])
def test_invariant_to_scaling_and_shifting_y(solver_tol, rel_tol):
    # Every step is equivariant in y, so the inner SVR problems agree up to round-off.
    # libsvm stops when its KKT violation is below `tol` (units of the standardised y), and
    # problems equal up to round-off can stop at points a few to ~15 tol apart (measured
    # here). So: at the default solver tol, agreement to 2% of the noise scale scale_
    # (immaterial next to the noise); with a tight solver tol, to 1e-5 of it. Without the
    # standardisation of y (C on the raw scale), predictions here differ by far more.
    rng = np.random.default_rng(4)
    X = rng.uniform(-2, 2, size=(300, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] + rng.uniform(-0.4, 0.4, size=300)
    X_new = rng.uniform(-2, 2, size=(50, 2))
    base = WorkingLikelihoodSVR(C=10.0, tol=solver_tol).fit(X, y)
    big = WorkingLikelihoodSVR(C=10.0, tol=solver_tol).fit(X, 1000.0 * y)
    moved = WorkingLikelihoodSVR(C=10.0, tol=solver_tol).fit(X, 3.0 * y + 50.0)
    assert base.epsilon_ > 0.1 * base.scale_  # a case where epsilon is not 0
    tol = rel_tol * base.scale_
    p = base.predict(X_new)
    np.testing.assert_allclose(big.predict(X_new) / 1000.0, p, rtol=0, atol=tol)
    np.testing.assert_allclose((moved.predict(X_new) - 50.0) / 3.0, p, rtol=0, atol=tol)
    assert big.epsilon_ / 1000.0 == pytest.approx(base.epsilon_, abs=tol)
    assert moved.epsilon_ / 3.0 == pytest.approx(base.epsilon_, abs=tol)
    assert big.sigma_ / 1000.0 == pytest.approx(base.sigma_, abs=tol)
    assert big.scale_ / 1000.0 == pytest.approx(base.scale_, abs=tol)
    assert big.n_iter_ == base.n_iter_ == moved.n_iter_


def test_invariant_to_flipping_y():
    # -y is a mirrored problem, which libsvm solves along a different path: compare at a
    # tight solver tolerance (1e-5 of scale_, as above).
    rng = np.random.default_rng(4)
    X = rng.uniform(-2, 2, size=(300, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] + rng.uniform(-0.4, 0.4, size=300)
    base = WorkingLikelihoodSVR(C=10.0, tol=1e-7).fit(X, y)
    flip = WorkingLikelihoodSVR(C=10.0, tol=1e-7).fit(X, -y)
    np.testing.assert_allclose(-flip.predict(X), base.predict(X), rtol=0,
                               atol=1e-5 * base.scale_)
    assert flip.epsilon_ == pytest.approx(base.epsilon_, abs=1e-5 * base.scale_)


def test_fitted_attributes_are_consistent():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 2))
    y = 100.0 * (np.cos(X[:, 0]) + rng.laplace(scale=0.2, size=200))
    m = WorkingLikelihoodSVR().fit(X, y)
    K = rbf_kernel(X[:7], m.support_vectors_, gamma=m.svr_._gamma)
    # dual_coef_ and intercept_ are in the units of y
    np.testing.assert_allclose(K @ m.dual_coef_.ravel() + m.intercept_, m.predict(X[:7]),
                               rtol=1e-10, atol=1e-8)
    assert m.svr_.epsilon == pytest.approx(m.epsilon_ / m.scale_)
    assert m.n_support_ == m.support_.size == m.support_vectors_.shape[0]
    assert m.n_features_in_ == 2
    assert m.epsilon_path_.shape == (m.n_iter_ + 2,)
    assert m.epsilon_ >= 0 and m.sigma_ > 0 and m.scale_ > 0


def test_convergence_warning():
    rng = np.random.default_rng(6)
    X = rng.uniform(-1, 1, size=(300, 1))
    y = X[:, 0] + rng.normal(scale=0.3, size=300)
    with pytest.warns(ConvergenceWarning, match="did not settle"):
        m = WorkingLikelihoodSVR(max_iter=1, epsilon_tol=0.0).fit(X, y)
    assert not m.converged_
    assert m.n_iter_ == 1


# ----------------------------------------------------------------- bad input
def _xy(n=30):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(n, 2))
    return X, X[:, 0] + rng.normal(size=n)


def test_nan_in_X():
    X, y = _xy()
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        WorkingLikelihoodSVR().fit(X, y)
    X[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        WorkingLikelihoodSVR().fit(X, y)


def test_nan_in_y():
    X, y = _xy()
    y[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        WorkingLikelihoodSVR().fit(X, y)


def test_wrong_shapes():
    X, y = _xy()
    with pytest.raises(ValueError, match="2D array"):
        WorkingLikelihoodSVR().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        WorkingLikelihoodSVR().fit(X, y[:-1])
    with pytest.raises(ValueError, match="1d array"):
        WorkingLikelihoodSVR().fit(X, np.c_[y, y])
    with pytest.raises(ValueError, match="minimum of 2"):
        WorkingLikelihoodSVR().fit(X[:1], y[:1])
    m = WorkingLikelihoodSVR().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        m.predict(np.c_[X, X])
    with pytest.raises(ValueError, match="NaN"):
        m.predict(np.full_like(X, np.nan))


def test_constant_y():
    X, _ = _xy()
    with pytest.raises(ValueError, match="y is constant"):
        WorkingLikelihoodSVR().fit(X, np.full(X.shape[0], 3.5))


def test_not_fitted():
    with pytest.raises(NotFittedError):
        WorkingLikelihoodSVR().predict(np.zeros((2, 2)))


def test_bad_params():
    X, y = _xy()
    with pytest.raises(ValueError, match="C"):
        WorkingLikelihoodSVR(C=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="max_iter"):
        WorkingLikelihoodSVR(max_iter=0).fit(X, y)
    with pytest.raises(ValueError, match="cv"):
        WorkingLikelihoodSVR(cv=1).fit(X, y)
