"""UniDD spectral lens: filters, matrix functions, FFC/FLC statistics, the loss, KRR, ``spectral``."""

import math

import pytest
import torch

import ddkit
from ddkit.augment import DSA
from ddkit.distill.dm import dm_loss
from ddkit.distill.spectral import spectral_loss
from ddkit.errors import ConfigError, DDKitError
from ddkit.models import get_model
from ddkit.spectral import (
    RunningStats,
    apply,
    class_feature_stats,
    custom,
    feature_stats,
    get_filter,
    krr_predict,
    krr_predict_kernel,
    spectral_matching_loss,
)

F64 = torch.float64


def psd_from_spectrum(lam: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Q diag(λ) Qᵀ with a random orthogonal Q (float64); returns (A, Q)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=F64))
    return (q * lam) @ q.T, q


def spectral_reference(q: torch.Tensor, fl: torch.Tensor) -> torch.Tensor:
    return (q * fl) @ q.T


FILTERS = [
    ("identity", {}),
    ("linear", {}),
    ("inverse", {"beta": 0.3}),
    ("polynomial", {"alpha": 0.05, "p": 3}),
    ("polynomial", {"alpha": 0.05, "p": 2.5}),
]


def direct(name: str, params: dict, a: torch.Tensor) -> torch.Tensor:
    """The filter as a plain matrix expression (no eigendecomposition where one exists)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    if name == "identity":
        return eye.expand_as(a)
    if name == "linear":
        return a
    if name == "inverse":
        return torch.linalg.inv(a + params["beta"] * eye)
    if float(params["p"]).is_integer():
        return torch.linalg.matrix_power(eye - params["alpha"] * a, int(params["p"]))
    raise AssertionError("no closed form")


# --------------------------------------------------------------------------- filters


def test_filter_values_and_params():
    lam = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=F64)
    torch.testing.assert_close(get_filter("identity").f(lam), torch.ones(4, dtype=F64))
    torch.testing.assert_close(get_filter("linear").f(lam), lam)
    inv = get_filter("inverse", beta=0.5)
    torch.testing.assert_close(inv.f(lam), torch.tensor([2.0, 1.0, 0.4, 1 / 10.5], dtype=F64))
    assert inv.name == "inverse" and inv.params == {"beta": 0.5}
    poly = get_filter("polynomial", alpha=0.1, p=2)
    torch.testing.assert_close(poly.f(lam), torch.tensor([1.0, 0.9025, 0.64, 0.0], dtype=F64))
    assert poly.params == {"alpha": 0.1, "p": 2}
    # integer p: the plain power, defined beyond αλ = 1; non-integer p: base clamped at 0
    torch.testing.assert_close(get_filter("polynomial", alpha=0.5, p=3).f(torch.tensor([4.0], dtype=F64)),
                               torch.tensor([-1.0], dtype=F64))
    frac = get_filter("polynomial", alpha=0.5, p=0.5).f(torch.tensor([1.0, 4.0], dtype=F64))
    torch.testing.assert_close(frac, torch.tensor([math.sqrt(0.5), 0.0], dtype=F64))
    c = custom(lambda x: torch.exp(-x), name="heat", t=1.0)
    assert c.name == "heat" and c.params == {"t": 1.0}
    torch.testing.assert_close(c(lam), torch.exp(-lam))
    # derivatives: closed form for built-ins, autograd for custom filters
    torch.testing.assert_close(inv.derivative(lam), -1 / (lam + 0.5) ** 2)
    torch.testing.assert_close(c.derivative(lam), -torch.exp(-lam))
    # frozen, hashable
    with pytest.raises(AttributeError):
        inv.name = "x"
    assert hash(get_filter("identity")) is not None


@pytest.mark.parametrize("bad", [
    ("nope", {}), ("inverse", {}), ("inverse", {"beta": 0}), ("inverse", {"beta": -1.0}),
    ("inverse", {"beta": float("inf")}), ("inverse", {"beta": float("nan")}), ("inverse", {"beta": "x"}),
    ("identity", {"beta": 1.0}), ("polynomial", {"alpha": 0.1}), ("polynomial", {"alpha": 0, "p": 2}),
    ("polynomial", {"alpha": 0.1, "p": -1}), ("custom", {}), ("custom", {"fn": 3}),
])
def test_bad_filters_raise_config_error(bad):
    name, params = bad
    with pytest.raises(ConfigError):
        get_filter(name, **params)


# --------------------------------------------------------------------------- apply


@pytest.mark.parametrize("name,params", FILTERS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_apply_equals_direct_matrix_expression(name, params, dtype):
    filt = get_filter(name, **params)
    lam = torch.tensor([0.0, 1e-9, 0.2, 1.0, 3.0, 7.5], dtype=F64)  # singular and near-singular
    a64, q = psd_from_spectrum(lam)
    a = a64.to(dtype)
    out = apply(filt, a)
    assert out.dtype == dtype and out.shape == a.shape and torch.isfinite(out).all()
    if name == "polynomial" and not float(params["p"]).is_integer():
        ref = spectral_reference(q, filt.f(lam))
    else:
        ref = direct(name, params, a64)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(out.to(F64), ref, **tol)
    # f(A) B without forming f(A), and batches of matrices
    b = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(apply(filt, a, b.to(dtype)).to(F64), ref @ b, **tol)
    batch = torch.stack([a, 2 * a])
    got = apply(filt, batch)
    assert got.shape == (2, 6, 6)
    torch.testing.assert_close(got[0], out, rtol=1e-6, atol=1e-6)


def test_apply_clamps_rounding_negatives_and_rejects_non_psd():
    lam = torch.tensor([0.0, 0.0, 0.0, 1e-10, 1.0, 4.0, 9.0, 16.0], dtype=F64)
    a64, q = psd_from_spectrum(lam, seed=3)
    a32 = a64.float()  # float32 rounding gives tiny negative eigenvalues
    assert torch.linalg.eigvalsh(a64.to(torch.float32).double()).min() < 0
    sqrt = custom(torch.sqrt, name="sqrt")
    out = apply(sqrt, a32)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), spectral_reference(q, lam.sqrt()), rtol=0, atol=2e-3)
    # a matrix with a clearly negative eigenvalue is not an FFC
    bad, _ = psd_from_spectrum(torch.tensor([-1.0, 1.0, 2.0], dtype=F64))
    with pytest.raises(DDKitError, match="positive semi-definite"):
        apply(sqrt, bad)
    with pytest.raises(DDKitError, match="NaN"):
        apply("linear", torch.full((3, 3), float("nan")))
    with pytest.raises(DDKitError, match="square"):
        apply("linear", torch.zeros(3, 4))
    # inverse with β negligible next to ‖A‖: Cholesky may fail, the eigh fallback is finite
    near, _ = psd_from_spectrum(torch.tensor([0.0, 1e-3, 1e12], dtype=F64))
    assert torch.isfinite(apply(get_filter("inverse", beta=1e-30), near)).all()


def _grad(filt, a, w):
    a = a.clone().requires_grad_(True)
    (apply(filt, a) * w).sum().backward()
    return a.grad


def test_eigh_path_gradient_matches_closed_forms_even_with_repeated_eigenvalues():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 1, dtype=F64, generator=g)
    a = torch.eye(5, dtype=F64) + v @ v.T  # eigenvalue 1 repeated 4 times
    w = torch.randn(5, 5, dtype=F64, generator=g)
    pairs = [
        (get_filter("inverse", beta=0.3), custom(lambda x: 1 / (x + 0.3))),
        (get_filter("polynomial", alpha=0.05, p=3), custom(lambda x: (1 - 0.05 * x) ** 3)),
        (get_filter("linear"), custom(lambda x: x)),
    ]
    for closed, generic in pairs:
        g1, g2 = _grad(closed, a, w), _grad(generic, a, w)
        assert torch.isfinite(g2).all()
        torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-10)
    # exactly repeated eigenvalues (A = 2I): d f(A) = f'(2) dA
    eye2 = 2 * torch.eye(5, dtype=F64)
    got = _grad(custom(lambda x: 1 / (x + 0.3)), eye2, w)
    torch.testing.assert_close(got, -(w + w.T) / 2 / 2.3**2)
    torch.testing.assert_close(got, _grad(get_filter("inverse", beta=0.3), eye2, w))
    # plain autograd through eigh, which this avoids: wrong for near-repeated, NaN for repeated eigenvalues
    for m in (a, eye2):
        m2 = m.clone().requires_grad_(True)
        lam, u = torch.linalg.eigh(m2)
        ((u * (1 / (lam + 0.3))) @ u.T * w).sum().backward()
        exact = _grad(get_filter("inverse", beta=0.3), m, w)
        assert not torch.isfinite(m2.grad).all() or (m2.grad - exact).abs().max() > 1e-3


def test_eigh_path_gradcheck():
    a, _ = psd_from_spectrum(torch.tensor([0.5, 1.0, 2.0, 3.5], dtype=F64), seed=4)
    a.requires_grad_(True)
    heat = custom(lambda x: torch.exp(-x))
    assert torch.autograd.gradcheck(lambda m: apply(heat, m), (a,))
    assert torch.autograd.gradcheck(lambda m: apply(get_filter("polynomial", alpha=0.1, p=1.5), m), (a,))


# --------------------------------------------------------------------------- statistics


def test_streamed_stats_equal_full_batch_and_direct():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 6, generator=g)
    soft = torch.softmax(torch.randn(50, 3, generator=g), 1)
    labels = torch.randint(3, (50,), generator=g)
    h64 = h.double()
    for y, y64 in ((soft, soft.double()), (labels, torch.nn.functional.one_hot(labels, 3).double())):
        full = feature_stats(h, y, num_classes=3)
        assert full.ffc.dtype == F64 and full.n == 50
        torch.testing.assert_close(full.ffc, h64.T @ h64 / 50)
        torch.testing.assert_close(full.flc, h64.T @ y64 / 50)
        rs = RunningStats(num_classes=3)
        for lo, hi in ((0, 10), (10, 25), (25, 50)):
            rs.update(h[lo:hi], y[lo:hi])
        assert rs.n == 50
        torch.testing.assert_close(rs.ffc(), full.ffc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rs.flc(), full.flc, rtol=1e-12, atol=1e-12)
        raw = RunningStats(num_classes=3, normalize=False).update(h[:20], y[:20]).update(h[20:], y[20:])
        torch.testing.assert_close(raw.ffc(), h64.T @ h64)
        # class-conditional: per class, weighted second moment and mean
        cc = class_feature_stats(h, y, num_classes=3)
        rcc = RunningStats(num_classes=3, class_conditional=True)
        for lo, hi in ((0, 30), (30, 50)):
            rcc.update(h[lo:hi], y[lo:hi])
        for c in range(3):
            wc = y64[:, c]
            torch.testing.assert_close(cc.ffc[c], (h64 * wc[:, None]).T @ h64 / wc.sum())
            torch.testing.assert_close(cc.flc[c, :, 0], (h64 * wc[:, None]).sum(0) / wc.sum())
        torch.testing.assert_close(rcc.ffc(), cc.ffc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rcc.flc(), cc.flc, rtol=1e-12, atol=1e-12)
    with pytest.raises(DDKitError):
        RunningStats(num_classes=3).update(h, labels).update(torch.randn(4, 7), labels[:4])
    with pytest.raises(DDKitError):
        feature_stats(h, labels)  # integer labels need num_classes


# --------------------------------------------------------------------------- the loss


def linear_feature_sets(k=4, b=7, s=3, d_in=10, d=5, seed=0, sizes=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d, generator=g, dtype=F64)
    counts_real = sizes[0] if sizes else [b] * k
    counts_syn = sizes[1] if sizes else [s] * k
    x_real = torch.randn(sum(counts_real), d_in, generator=g, dtype=F64)
    x_syn = torch.randn(sum(counts_syn), d_in, generator=g, dtype=F64, requires_grad=True)
    y_real = torch.arange(k).repeat_interleave(torch.tensor(counts_real))
    y_syn = torch.arange(k).repeat_interleave(torch.tensor(counts_syn))
    return w, x_real, y_real, x_syn, y_syn


def test_identity_filter_with_flc_is_dm_over_k_squared():
    k = 4
    w, x_real, y_real, x_syn, y_syn = linear_feature_sets(k=k)
    loss = spectral_matching_loss("identity", feature_stats(x_real @ w, y_real, num_classes=k),
                                  feature_stats(x_syn @ w, y_syn, num_classes=k), g="flc")
    (g_loss,) = torch.autograd.grad(loss, x_syn)
    # DM, computed independently: sum over classes of the squared class-mean gap
    dm = sum((((x_real[y_real == c] @ w).mean(0) - (x_syn[y_syn == c] @ w).mean(0)) ** 2).sum() for c in range(k))
    (g_dm,) = torch.autograd.grad(dm, x_syn)
    torch.testing.assert_close(loss * k * k, dm)
    torch.testing.assert_close(g_loss * k * k, g_dm)
    # unbalanced classes: the documented general form Σ_c ‖(n_c/n) μ_c − (m_c/m) μ^s_c‖²
    w, x_real, y_real, x_syn, y_syn = linear_feature_sets(k=3, sizes=([5, 9, 2], [1, 2, 3]))
    loss = spectral_matching_loss("identity", feature_stats(x_real @ w, y_real, num_classes=3),
                                  feature_stats(x_syn @ w, y_syn, num_classes=3), g="flc")
    ref = sum(((x_real[y_real == c] @ w).sum(0) / 16 - (x_syn[y_syn == c] @ w).sum(0) / 6).pow(2).sum()
              for c in range(3))
    torch.testing.assert_close(loss, ref)


def test_distiller_loss_with_identity_filter_equals_dm_loss():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, width=16)
    real = torch.randn(3 * 6, 1, 8, 8)
    syn = torch.randn(3 * 2, 1, 8, 8, requires_grad=True)
    dsa = DSA(image_size=8)
    a = spectral_loss(net.embed, real, syn, 3, "identity", dsa, torch.Generator().manual_seed(7))
    (ga,) = torch.autograd.grad(a, syn)
    b = dm_loss(net.embed, real, syn, 3, dsa, torch.Generator().manual_seed(7))
    (gb,) = torch.autograd.grad(b, syn)
    torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-7)


def test_loss_with_other_filters_matches_direct_expressions():
    k, beta = 3, 0.2
    w, x_real, y_real, x_syn, y_syn = linear_feature_sets(k=k)
    hr, hs = x_real @ w, x_syn @ w
    yr = torch.nn.functional.one_hot(y_real, k).double()
    ys = torch.nn.functional.one_hot(y_syn, k).double()
    ar, br = hr.T @ hr / len(hr), hr.T @ yr / len(hr)
    as_, bs = hs.T @ hs / len(hs), hs.T @ ys / len(hs)
    sr, ss = feature_stats(hr, y_real, num_classes=k), feature_stats(hs, y_syn, num_classes=k)
    eye = torch.eye(w.shape[1], dtype=F64)
    inv = get_filter("inverse", beta=beta)
    ref = ((torch.linalg.inv(ar + beta * eye) @ br - torch.linalg.inv(as_ + beta * eye) @ bs) ** 2).sum()
    torch.testing.assert_close(spectral_matching_loss(inv, sr, ss, g="flc"), ref)
    ref = ((torch.linalg.inv(ar + beta * eye) - torch.linalg.inv(as_ + beta * eye)) ** 2).sum()
    torch.testing.assert_close(spectral_matching_loss(inv, sr, ss, g="identity"), ref)
    torch.testing.assert_close(spectral_matching_loss("linear", sr, ss, g="flc"), ((ar @ br - as_ @ bs) ** 2).sum())
    assert float(spectral_matching_loss("identity", sr, ss, g="identity").detach()) == 0.0
    assert float(spectral_matching_loss(inv, sr, sr, g="flc")) == 0.0
    with pytest.raises(ConfigError):
        spectral_matching_loss(inv, sr, ss, g="ffc")
    with pytest.raises(DDKitError):
        spectral_matching_loss(inv, sr, feature_stats(hs[:, :3], y_syn, num_classes=k), g="flc")


# --------------------------------------------------------------------------- KRR


@pytest.mark.parametrize("n,d", [(6, 10), (20, 4)])
def test_krr_primal_equals_dual_equals_direct(n, d):
    g = torch.Generator().manual_seed(n)
    hs = torch.randn(n, d, generator=g, dtype=F64)
    ys = torch.nn.functional.one_hot(torch.randint(3, (n,), generator=g), 3).double()
    hq = torch.randn(5, d, generator=g, dtype=F64)
    beta = 0.7
    weights = torch.linalg.inv(hs.T @ hs + beta * torch.eye(d, dtype=F64)) @ hs.T @ ys
    ref = hq @ weights
    primal = krr_predict(hs, ys, hq, beta, form="primal")
    dual = krr_predict(hs, ys, hq, beta, form="dual")
    torch.testing.assert_close(primal, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(dual, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(krr_predict(hs, ys, hq, beta, form="auto"), ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(krr_predict_kernel(hq @ hs.T, hs @ hs.T, ys, beta), ref, rtol=1e-9, atol=1e-10)
    # the inverse filter on mean-normalised statistics = KRR weights with ridge n·β
    st = feature_stats(hs, ys)
    torch.testing.assert_close(apply(get_filter("inverse", beta=beta), st.ffc, st.flc),
                               torch.linalg.solve(hs.T @ hs + n * beta * torch.eye(d, dtype=F64), hs.T @ ys))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError):
            krr_predict(hs, ys, hq, bad)


# --------------------------------------------------------------------------- the distiller


def test_spectral_distiller_runs_and_changes_images(digits):
    real, _ = digits
    cfg = {"batch_real": 8, "model": "convnet-w32"}
    out = ddkit.distill(real, "spectral", 1, iterations=2, config=cfg, device="cpu", progress=False)
    init = ddkit.distill(real, "spectral", 1, iterations=0, config=cfg, device="cpu", progress=False)
    assert out.images.shape == (10, 1, 8, 8) and out.labels.tolist() == list(range(10))
    assert out.method == "spectral" and out.extra["iterations_run"] == 2 and "seconds" in out.extra
    assert out.extra["filter"] == "identity"
    assert (out.images - init.images).abs().max() > 1e-3
    # the identity filter is DM: the same run, image for image
    dm = ddkit.distill(real, "dm", 1, iterations=2, config=cfg, device="cpu", progress=False)
    torch.testing.assert_close(out.images, dm.images, rtol=0, atol=1e-5)


def test_spectral_resume_equals_unbroken_run(digits, tmp_path):
    real, _ = digits
    cfg = {"batch_real": 16, "checkpoint_every": 2, "model": "convnet-w32", "filter": "inverse", "beta": 0.5}
    whole = ddkit.distill(real, "spectral", 2, iterations=4, config=cfg, seed=5, device="cpu", progress=False)
    ck = tmp_path / "run.ckpt"
    ddkit.distill(real, "spectral", 2, iterations=2, config=cfg, seed=5, device="cpu", progress=False, checkpoint=ck)
    assert ck.exists()
    resumed = ddkit.distill(real, "spectral", 2, iterations=4, config=cfg, seed=5, device="cpu", progress=False,
                            checkpoint=ck, resume=True)
    assert resumed.extra["iterations_run"] == 2 and resumed.extra["filter_params"] == {"beta": 0.5}
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    init = ddkit.distill(real, "spectral", 2, iterations=0, config=cfg, seed=5, device="cpu", progress=False)
    assert (whole.images - init.images).abs().max() > 1e-3
    # a resume with another filter setting is refused
    with pytest.raises(ConfigError):
        ddkit.distill(real, "spectral", 2, iterations=4, config={**cfg, "beta": 0.2}, seed=5, device="cpu",
                      progress=False, checkpoint=ck, resume=True)


@pytest.mark.parametrize("bad", [{"filter": "nope"}, {"beta": 0}, {"beta": -0.1}, {"alpha": 0.0}, {"p": -2},
                                 {"init": "zeros"}, {"gamma": 1}])
def test_spectral_bad_config_raises_config_error(digits, bad):
    real, _ = digits
    with pytest.raises(ConfigError):
        ddkit.distill(real, "spectral", 1, iterations=1, config=bad, device="cpu", progress=False)


def test_krr_methods_are_the_inverse_filter_on_the_ffc():
    """KIP's loss, FRePo's prediction and CFM's HFM are UniDD's (λ+β)^-1 filter: on fixed
    linear features each equals the expression built from ``apply(inverse(β), H_sᵀH_s)``."""
    from ddkit.distill.cfm import filtered, make_filter
    from ddkit.distill.frepo import frepo_krr_predict
    from ddkit.distill.kip import kip_loss
    from ddkit.spectral import apply, get_filter

    g = torch.Generator().manual_seed(3)
    hs = torch.randn(12, 6, generator=g, dtype=torch.float64)
    ht = torch.randn(20, 6, generator=g, dtype=torch.float64)
    ys = torch.randn(12, 3, generator=g, dtype=torch.float64)
    yt = torch.randn(20, 3, generator=g, dtype=torch.float64)
    reg = 0.05
    beta = reg * float(torch.trace(hs @ hs.T)) / 12  # both methods scale the ridge by tr(K_ss)/n_s
    inv_ffc = apply(get_filter("inverse", beta=beta), hs.T @ hs)  # f(H_sᵀH_s) = (H_sᵀH_s + βI)^-1
    pred = ht @ inv_ffc @ (hs.T @ ys)  # f(FFC_s) · FLC_s, read out by the real features
    torch.testing.assert_close(frepo_krr_predict(hs, ys, ht, reg), pred, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(kip_loss(ht @ hs.T, hs @ hs.T, ys, yt, reg), 0.5 * ((yt - pred) ** 2).mean(),
                               rtol=1e-8, atol=1e-10)
    # CFM's high-frequency matching filter is the same object, applied to a covariance
    cov = hs.T @ hs / 12
    mu = hs.mean(0)
    f_cov, f_mu = filtered(make_filter("hfm", 0.1), cov, mu)
    direct = torch.linalg.inv(cov + 0.1 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(f_cov, direct, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(f_mu, direct @ mu, rtol=1e-6, atol=1e-8)
