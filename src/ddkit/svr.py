"""Support vector regression with a data-driven insensitivity parameter.

This module provides :class:`WorkingLikelihoodSVR`, an ε-SVR whose insensitivity ε (and the
noise scale used to standardise the response) is estimated from the data by maximising a
*working likelihood* — the ε-insensitive Laplace density — over the residuals, alternating
with the SVR fit. It also provides the two building blocks as functions:
:func:`working_likelihood_fit` (the exact maximiser for given residuals) and
:func:`working_density_sd` (the standard deviation implied by a fitted density).

Source
------
Wu & Wang, "A working likelihood approach to support vector regression with a data-driven
insensitivity parameter", *International Journal of Machine Learning and Cybernetics*
(2022), doi:10.1007/s13042-022-01672-x. Only the paper's abstract and introduction were
available when this was written; the construction here is the standard one its title and
abstract describe and may differ from the paper in its details (see the class docstring).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold
from sklearn.svm import SVR
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _validate_data = None

__all__ = ["WorkingLikelihoodSVR", "working_likelihood_fit", "working_density_sd"]

# Factor making the median absolute deviation a consistent estimate of a normal s.d.
_MAD_TO_SD = 1.482602218505602
# Factor making the mean absolute deviation a consistent estimate of a normal s.d.
_MEANAD_TO_SD = 1.2533141373155001


def working_likelihood_fit(residuals):
    """Maximise the ε-insensitive Laplace working likelihood over (ε, σ), exactly.

    The working density of a residual ``r`` is

        p(r | ε, σ) = exp(-|r|_ε / σ) / (2 (ε + σ)),   |r|_ε = max(0, |r| - ε),

    with log-likelihood ``l(ε, σ) = -n log(2(ε + σ)) - S(ε)/σ``, ``S(ε) = Σ |r_i|_ε``.
    For fixed ε the maximising σ is the positive root of ``n σ² - S(ε) σ - S(ε) ε = 0``.
    Substituting it gives the profile ``-l(ε) = n [log(2(ε + σ(ε))) + σ(ε)/(ε + σ(ε))]``.
    Between consecutive sorted ``|r_i|`` the sum ``S`` is affine in ε, so for each fixed σ
    ``-l(ε, σ)`` is concave in ε there, and so is its minimum over σ, the profile. The
    profile's minimum over ``[0, ∞)`` is therefore at a breakpoint ``ε ∈ {0, |r_(1)|,
    ..., |r_(n)|}`` (it increases beyond ``|r_(n)|``), and evaluating all of them
    (O(n log n)) gives the exact global maximiser of the likelihood. A smooth 1-D search
    (e.g. bounded Brent) can miss it: the maximum sits on a kink.

    Parameters
    ----------
    residuals : array-like of shape (n_samples,)
        Residuals ``y - f(x)``, in the units of ``y``. Must be finite; ``n_samples >= 1``.

    Returns
    -------
    epsilon : float
        Maximising ε, in the units of ``residuals``: 0 or one of the ``|r_i|``.
    sigma : float
        Maximising σ, in the units of ``residuals`` (``>= 0``). It is 0 when the maximum
        is the uniform limit ``ε = max |r_i|`` (typical for bounded, e.g. uniform, noise).
    neg_log_likelihood : float
        ``-l(ε, σ)`` at the maximum (dimensionless; ``-inf`` if all residuals are 0).

    Raises
    ------
    ValueError
        If ``residuals`` is empty or not finite.
    """
    a = np.abs(np.asarray(residuals, dtype=float).ravel())
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError("residuals must be a non-empty array of finite values.")
    a.sort()
    n = a.size
    if a[-1] == 0.0:
        return 0.0, 0.0, -np.inf
    # tail[j] = sum of a[j:]; at the breakpoint eps[j] (eps[0] = 0, eps[j] = a[j-1]) the
    # residuals a[j:] (n - j of them) are >= eps, the rest <= eps.
    tail = np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])
    eps = np.concatenate([[0.0], a])
    s = np.maximum(tail - (n - np.arange(n + 1)) * eps, 0.0)
    sig = (s + np.sqrt(s * s + 4.0 * n * s * eps)) / (2.0 * n)
    tot = eps + sig
    with np.errstate(divide="ignore", invalid="ignore"):
        nll = n * (np.log(2.0 * tot) + np.where(tot > 0, sig / tot, 0.0))
    nll[tot <= 0] = np.inf
    i = int(np.argmin(nll))
    return float(eps[i]), float(sig[i]), float(nll[i])


def working_density_sd(epsilon, sigma):
    """Standard deviation of the ε-insensitive Laplace density ``p(r | ε, σ)``.

    ``Var(r) = (ε³/3 + ε² σ + 2 ε σ² + 2 σ³) / (ε + σ)``: ``√2 σ`` for the Laplace
    (ε = 0) and ``ε / √3`` for the uniform (σ = 0) limit.

    Parameters
    ----------
    epsilon, sigma : float
        Non-negative parameters, in the units of the residuals.

    Returns
    -------
    sd : float
        In the units of the residuals; 0 when ``epsilon == sigma == 0``.
    """
    e, s = float(epsilon), float(sigma)
    if e + s <= 0.0:
        return 0.0
    var = (e**3 / 3.0 + e * e * s + 2.0 * e * s * s + 2.0 * s**3) / (e + s)
    return float(np.sqrt(var))


def _robust_scale(r):
    """Normal-consistent MAD of ``r``; mean absolute deviation, then 0, as fallbacks."""
    r = np.asarray(r, dtype=float)
    dev = np.abs(r - np.median(r))
    scale = _MAD_TO_SD * float(np.median(dev))
    if scale > 0.0:
        return scale
    return _MEANAD_TO_SD * float(np.mean(dev))


class WorkingLikelihoodSVR(RegressorMixin, BaseEstimator):
    r"""ε-SVR with ε and the response scale estimated by a working likelihood.

    The ε-insensitive loss of support vector regression is read as a density — the
    *working likelihood* — of the residual ``r = y - f(x)``:

    .. math::

        p(r \mid \varepsilon, \sigma)
            = \frac{\exp(-|r|_\varepsilon / \sigma)}{2(\varepsilon + \sigma)},
        \qquad |r|_\varepsilon = \max(0, |r| - \varepsilon),

    (a uniform centre of half-width ε with Laplace tails of scale σ). Its log-likelihood
    over residuals ``r_1..r_n`` is

    .. math::

        \ell(\varepsilon, \sigma) = -n \log\bigl(2(\varepsilon + \sigma)\bigr)
            - \frac{1}{\sigma} \sum_i |r_i|_\varepsilon ,

    maximised in σ for fixed ε by the positive root of
    :math:`n\sigma^2 - S(\varepsilon)\sigma - S(\varepsilon)\varepsilon = 0`,
    :math:`S(\varepsilon) = \sum_i |r_i|_\varepsilon`, and in ε by an exact search over
    the breakpoints of the piecewise-concave profile (:func:`working_likelihood_fit`).

    Fitting (every step is equivariant under ``y -> a y + b``, ``a != 0``):

    1. Centre ``y`` at its median ``c``; fit ``SVR(epsilon=0)`` to ``(y - c) / s_y``
       with ``s_y`` the normal-consistent MAD of ``y``; take its residuals ``r``
       (units of y).
    2. ``(ε, σ) = argmax ℓ`` over ``r``; set the scale ``s = sd(ε, σ)``, the standard
       deviation of the fitted working density (:func:`working_density_sd`).
    3. Fit ``SVR(epsilon=ε/s)`` to ``(y - c) / s``; take its residuals ``r``; go to 2.
    4. Stop when ε and ``s`` each change by at most ``epsilon_tol * s`` in a round; warn
       with a :class:`~sklearn.exceptions.ConvergenceWarning` (keeping the last fit) when
       the rounds revisit an earlier (ε, s) — a cycle — or ``max_iter`` rounds pass.

    The residuals ``r`` are in-sample by default (``cv=None``). With ``cv=k`` they are
    out-of-fold residuals of ``k`` extra SVR fits per round (same ε, scale and C), which
    are closer to the noise than in-sample ones (see Notes); the returned model is always
    the fit on all the data.

    Prediction is ``c + s * svr_.predict(X)``. Because the SVR sees ``y`` in units of the
    noise scale, ``C`` has a fixed meaning across data sets: the SVR objective is then the
    negative log posterior of the working likelihood with a Gaussian prior on the function
    whose variance is ``C`` times the squared noise scale (with a kernel that has
    ``k(x, x) = 1``, e.g. RBF), i.e. ``C`` acts as a prior signal-to-noise ratio. The
    estimator is invariant to the units and origin of ``y`` (the median centring only
    helps numerics: the SVR's intercept absorbs shifts of y).

    Parameters
    ----------
    kernel : {'linear', 'poly', 'rbf', 'sigmoid'} or callable, default='rbf'
        As in :class:`sklearn.svm.SVR` (``'precomputed'`` is not supported).
    degree : int, default=3
        As in :class:`sklearn.svm.SVR`.
    gamma : {'scale', 'auto'} or float, default='scale'
        As in :class:`sklearn.svm.SVR` (units of 1 / X², X as given).
    coef0 : float, default=0.0
        As in :class:`sklearn.svm.SVR`.
    tol : float, default=1e-3
        Tolerance of the inner SVR solver (as in :class:`sklearn.svm.SVR`).
    C : float, default=1.0
        Regularisation parameter of the inner SVR, which is fitted to ``y`` divided by the
        noise scale ``scale_``; so unlike in :class:`sklearn.svm.SVR`, ``C`` does not
        depend on the units of ``y``.
    shrinking : bool, default=True
        As in :class:`sklearn.svm.SVR`.
    cache_size : float, default=200
        Kernel cache size of the inner SVR, in MB.
    epsilon_tol : float, default=1e-2
        Stop when ε and the scale each change by at most ``epsilon_tol`` times the current
        scale between two rounds (dimensionless).
    max_iter : int, default=20
        Maximum number of rounds of step 3 (not counting the initial fit of step 1).
    svr_max_iter : int, default=-1
        Hard limit on the inner solver's iterations (``max_iter`` of
        :class:`sklearn.svm.SVR`); -1 for no limit.
    cv : int >= 2 or None, default=None
        None: estimate (ε, σ) from in-sample residuals. ``k``: from out-of-fold residuals
        of a shuffled ``k``-fold split (fixed for all rounds; about ``k + 1`` times the
        cost per round).
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle of the folds when ``cv`` is set; unused otherwise.

    Attributes
    ----------
    epsilon_ : float
        Fitted insensitivity ε, **in the units of y** (the inner SVR uses
        ``epsilon_ / scale_``). It is the ε of the final inner fit.
    sigma_ : float
        Laplace-tail scale σ of the working density, in the units of y: the maximiser of
        ``ℓ(epsilon_, σ)`` over the residuals of the final round (out-of-fold if ``cv``
        is set). It tends to 0 for bounded noise (uniform-like residuals), where ε
        absorbs the whole noise.
    scale_ : float
        Noise scale used to standardise y for the final fit (units of y): the standard
        deviation of the working density at the estimate that the final fit used.
    center_ : float
        Median of the training y (units of y).
    n_iter_ : int
        Number of rounds of steps 2-3 run (>= 1).
    converged_ : bool
        Whether ε settled within ``max_iter`` rounds.
    epsilon_path_ : ndarray of shape (n_iter_ + 2,)
        ε at the start (0), after step 1 and after each round, in the units of y.
    svr_ : sklearn.svm.SVR
        The final inner SVR, fitted to ``(y - center_) / scale_``.
    support_ : ndarray of shape (n_SV,)
        Indices of the support vectors in the training set.
    support_vectors_ : ndarray of shape (n_SV, n_features)
        Support vectors.
    n_support_ : int
        Number of support vectors.
    dual_coef_ : ndarray of shape (1, n_SV)
        Dual coefficients of the inner SVR, **in the units of y** (``svr_.dual_coef_ *
        scale_``), so that ``predict(X) = K(X, support_vectors_) @ dual_coef_.T +
        intercept_``.
    intercept_ : ndarray of shape (1,)
        Intercept in the units of y (``center_ + scale_ * svr_.intercept_``).
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names, when X has string column names.

    Raises
    ------
    ValueError
        From :meth:`fit`: X or y with NaN/inf, not 2-D / 1-D, inconsistent lengths, fewer
        than 2 samples, non-numeric values, or a constant y (the noise scale is then
        undefined; use :class:`sklearn.dummy.DummyRegressor`). From :meth:`predict`: X with
        NaN/inf or a different number of features than in fit.
    sklearn.exceptions.NotFittedError
        From :meth:`predict` before :meth:`fit`.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        When ε has not settled after ``max_iter`` rounds (the last fit is kept).

    Notes
    -----
    Population maximiser of the working likelihood for noise of standard deviation τ
    (a property of the density; it tells what ``epsilon_`` and ``sigma_`` estimate):

    * Laplace noise of scale b (τ = √2 b): ε = 0, σ = b.
    * ε-insensitive Laplace noise (ε₀, σ₀): ε = ε₀, σ = σ₀ (the model is correct).
    * normal noise: ε ≈ 0.8485 τ, σ ≈ 0.5567 τ (solving ``P(|r| > ε) = σ/(ε + σ)``,
      ``σ = E(|r| - ε | |r| > ε)``); working-density s.d. ≈ 1.025 τ.
    * uniform noise on [-a, a]: ε = a, σ = 0 (the density's uniform limit; the sample
      maximum is ε = max |r_i|).

    In-sample residuals are not a sample of the noise. They are smaller (the fit absorbs
    part of the noise), and an ε-SVR puts its free support vectors exactly on the tube
    ``|r| = ε`` and, at ε = 0, interpolates them (``r = 0`` exactly). Both make the
    current ε self-reinforcing: with ``cv=None`` the alternation often stays at ε = 0
    when the inputs are high-dimensional, and when the fit underfits (small C relative to
    the signal) its residuals are light-tailed and ε can jump to the uniform limit
    ``max |r_i|`` with σ ≈ 0, flattening the fit further. ``cv=k`` avoids both at
    ``k + 1`` times the cost but its rounds can cycle between nearby values (a
    ConvergenceWarning). ``C`` is not estimated and matters more than ε for accuracy:
    C = 1 (prior signal variance = noise variance) underfits high signal-to-noise data;
    tune C, e.g. by :class:`~sklearn.model_selection.GridSearchCV` over C only.

    Where this may differ from the paper (only its abstract and introduction could be
    read, so all details here are unconfirmed):

    * the paper standardises y by "the scale of noises"; here that is the s.d. of the
      fitted working density, not σ itself, because σ → 0 for bounded noise and
      standardising by it would make the SVR degenerate;
    * the start (ε = 0 fit on y / MAD(y), then the working likelihood directly, instead
      of the MAD of its residuals: an ε = 0 SVR interpolates many points exactly, so
      that MAD is often ~0), the stopping and cycle rules, the median centring, the exact
      breakpoint search and the ``cv`` option are choices made here;
    * C is not estimated; the paper may tune or set it differently.

    Source: Wu & Wang, *Int. J. Mach. Learn. Cybern.* (2022),
    doi:10.1007/s13042-022-01672-x.

    Examples
    --------
    >>> import numpy as np
    >>> from ddkit.svr import WorkingLikelihoodSVR
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-3, 3, size=(300, 1))
    >>> y = np.sinc(X[:, 0]) + rng.laplace(scale=0.1, size=300)
    >>> model = WorkingLikelihoodSVR().fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints: dict = {
        "kernel": [StrOptions({"linear", "poly", "rbf", "sigmoid"}), callable],
        "degree": [Interval(numbers.Integral, 0, None, closed="left")],
        "gamma": [
            StrOptions({"scale", "auto"}),
            Interval(numbers.Real, 0.0, None, closed="left"),
        ],
        "coef0": [Interval(numbers.Real, None, None, closed="neither")],
        "tol": [Interval(numbers.Real, 0.0, None, closed="neither")],
        "C": [Interval(numbers.Real, 0.0, None, closed="neither")],
        "shrinking": ["boolean"],
        "cache_size": [Interval(numbers.Real, 0, None, closed="neither")],
        "epsilon_tol": [Interval(numbers.Real, 0.0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "svr_max_iter": [Interval(numbers.Integral, -1, None, closed="left")],
        "cv": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        kernel="rbf",
        degree=3,
        gamma="scale",
        coef0=0.0,
        tol=1e-3,
        C=1.0,
        shrinking=True,
        cache_size=200,
        epsilon_tol=1e-2,
        max_iter=20,
        svr_max_iter=-1,
        cv=None,
        random_state=None,
    ):
        self.kernel = kernel
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.tol = tol
        self.C = C
        self.shrinking = shrinking
        self.cache_size = cache_size
        self.epsilon_tol = epsilon_tol
        self.max_iter = max_iter
        self.svr_max_iter = svr_max_iter
        self.cv = cv
        self.random_state = random_state

    def _make_svr(self, epsilon):
        return SVR(
            kernel=self.kernel,
            degree=self.degree,
            gamma=self.gamma,
            coef0=self.coef0,
            tol=self.tol,
            C=self.C,
            epsilon=epsilon,
            shrinking=self.shrinking,
            cache_size=self.cache_size,
            max_iter=self.svr_max_iter,
        )

    def _fit_and_residuals(self, X, yc, eps, scale, folds):
        """Fit the inner SVR at (eps, scale); return it and the residuals (units of y)."""
        svr = self._make_svr(eps / scale).fit(X, yc / scale)
        if folds is None:
            return svr, yc - scale * svr.predict(X)
        resid = np.empty_like(yc)
        for train, test in folds:
            part = self._make_svr(eps / scale).fit(X[train], yc[train] / scale)
            resid[test] = yc[test] - scale * part.predict(X[test])
        return svr, resid

    def _validate(self, X, y=None, reset=True):
        kwargs = {"accept_sparse": "csr", "dtype": np.float64, "order": "C"}
        if y is None and not reset:
            if _validate_data is not None:
                return _validate_data(self, X, reset=False, **kwargs)
            return self._validate_data(X, reset=False, **kwargs)  # pragma: no cover
        kwargs.update(y_numeric=True, ensure_min_samples=2)
        if _validate_data is not None:
            return _validate_data(self, X, y, reset=reset, **kwargs)
        return self._validate_data(X, y, reset=reset, **kwargs)  # pragma: no cover

    def fit(self, X, y):
        """Fit the SVR, estimating ε and the noise scale by the working likelihood.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training inputs (any units; standardise them beforehand for RBF kernels).
            ``n_samples >= 2``.
        y : array-like of shape (n_samples,)
            Targets, in any units; not constant.

        Returns
        -------
        self : WorkingLikelihoodSVR
            The fitted estimator.

        Raises
        ------
        ValueError
            For NaN/inf, wrong shapes, fewer than 2 samples, or a constant ``y``.
        """
        self._validate_params()
        X, y = self._validate(X, y, reset=True)
        if float(np.ptp(y)) == 0.0:
            raise ValueError(
                "y is constant (all values equal); the noise scale, and with it the "
                "insensitivity epsilon, is undefined. Use sklearn.dummy.DummyRegressor "
                "for a constant target."
            )
        folds = None
        if self.cv is not None:
            kf = KFold(n_splits=min(self.cv, y.size), shuffle=True,
                       random_state=check_random_state(self.random_state).randint(2**31 - 1))
            folds = list(kf.split(X))
        center = float(np.median(y))
        yc = y - center
        y_scale = _robust_scale(yc)
        if not y_scale > 0.0:
            y_scale = float(np.std(yc))

        # Step 1: initial SVR at epsilon = 0 on y / MAD(y); (epsilon, sigma) from its
        # residuals by the working likelihood.
        svr, resid = self._fit_and_residuals(X, yc, 0.0, y_scale, folds)
        eps, sigma, _ = working_likelihood_fit(resid)
        scale = working_density_sd(eps, sigma)
        if not scale > 0.0:  # the initial fit interpolates the data: keep the y scale
            eps, scale = 0.0, y_scale
        path = [0.0, eps]
        history = [(eps, scale)]  # (epsilon, scale) that each round is fitted with
        converged = False
        cycle = False
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            svr, resid = self._fit_and_residuals(X, yc, eps, scale, folds)
            new_eps, new_sigma, _ = working_likelihood_fit(resid)
            new_scale = working_density_sd(new_eps, new_sigma)
            path.append(new_eps)
            if not new_scale > 0.0:  # residuals all zero: nothing more to estimate
                converged = True
                break
            tol = self.epsilon_tol * new_scale

            def close(e, sc, tol=tol, new_eps=new_eps, new_scale=new_scale):
                return abs(new_eps - e) <= tol and abs(new_scale - sc) <= tol

            if close(eps, scale):
                converged = True
                break
            if any(close(e, sc) for e, sc in history[:-1]):
                cycle = True  # the alternation revisits an earlier state: it will not settle
                break
            eps, scale = new_eps, new_scale
            history.append((eps, scale))
        if not converged:
            what = (
                f"cycles (it returned to epsilon = {path[-1]:.4g} after {n_iter} rounds)"
                if cycle
                else f"did not settle within max_iter={self.max_iter} rounds"
            )
            warnings.warn(
                f"The working-likelihood epsilon {what}; the last fit (epsilon = {eps:.4g} "
                "in units of y) is kept. Increase epsilon_tol or max_iter, or change C.",
                ConvergenceWarning,
                stacklevel=2,
            )

        # Attributes describe the final inner fit (epsilon `eps`, scale `scale`).
        self.svr_ = svr
        self.center_ = center
        self.scale_ = float(scale)
        self.epsilon_ = float(eps)
        s_final = float(np.maximum(np.abs(resid) - eps, 0.0).sum())
        n = resid.size
        self.sigma_ = float((s_final + np.sqrt(s_final**2 + 4 * n * s_final * eps)) / (2 * n))
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.epsilon_path_ = np.asarray(path, dtype=float)
        self.support_ = svr.support_
        self.support_vectors_ = svr.support_vectors_
        self.n_support_ = int(svr.support_.size)
        self.dual_coef_ = svr.dual_coef_ * self.scale_
        self.intercept_ = self.center_ + self.scale_ * svr.intercept_
        return self

    def predict(self, X):
        """Predict targets.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Inputs with the same features as in :meth:`fit`.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predictions, in the units of the training y.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If called before :meth:`fit`.
        ValueError
            If X has NaN/inf or a different number of features than in fit.
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return self.center_ + self.scale_ * self.svr_.predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
