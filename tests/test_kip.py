"""KIP: the KRR loss, the kernels, the image distiller (resume, labels) and tabular KIP."""

import numpy as np
import torch

import ddkit
from ddkit.distill.kip import KIPConfig, kip_loss, kip_platt_loss, nngp_feature_kernel, ntk_kernel
from ddkit.models import RFADConvNet, get_model
from ddkit.spectral import centred_one_hot
from ddkit.tabular import kip_tabular, median_bandwidth, rbf_kernel, relu_nngp_kernel

TINY = {"batch_real": 20, "real_batches": 2, "num_models": 2, "width": 32, "checkpoint_every": 1}


def test_kip_loss_equals_direct_computation_on_a_fixed_kernel():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(11, 5, generator=g, dtype=torch.float64)
    k_ss, k_ts = a @ a.T, b @ a.T
    y_s, y_t = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(11, 3, generator=g, dtype=torch.float64)
    reg = 1e-2
    ridge = reg * torch.trace(k_ss) / 7
    pred = k_ts @ torch.linalg.inv(k_ss + ridge * torch.eye(7, dtype=torch.float64)) @ y_s
    direct = 0.5 * ((y_t - pred) ** 2).mean()
    torch.testing.assert_close(kip_loss(k_ts, k_ss, y_s, y_t, reg), direct, rtol=1e-8, atol=1e-10)
    # gradients flow to the kernel (through the solve and the trace-scaled ridge)
    k_ss2 = k_ss.clone().requires_grad_(True)
    kip_loss(k_ts, k_ss2, y_s, y_t, reg).backward()
    k_ss3 = k_ss.clone().requires_grad_(True)
    r3 = reg * torch.trace(k_ss3) / 7
    pred3 = k_ts @ torch.linalg.solve(k_ss3 + r3 * torch.eye(7, dtype=torch.float64), y_s)
    (0.5 * ((y_t - pred3) ** 2).mean()).backward()
    # krr_predict_kernel symmetrises K_ss, so its gradient is the symmetric part
    torch.testing.assert_close(k_ss2.grad, (k_ss3.grad + k_ss3.grad.T) / 2, rtol=1e-6, atol=1e-9)


def test_centred_one_hot():
    y = centred_one_hot(torch.tensor([0, 2]), 4)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.zeros(2))
    assert y[0, 0] == 0.75 and y[0, 1] == -0.25


def test_convnet_nngp_and_ntk_kernels_are_symmetric_psd():
    torch.manual_seed(0)
    nets = [get_model("convnet-w32", 1, 10, 8) for _ in range(2)]
    x = torch.randn(8, 1, 8, 8)
    for fn, arg in ((nngp_feature_kernel, [n.embed for n in nets]), (ntk_kernel, nets[:1])):
        k_ss, k_ts = fn(arg, x, x[:5])
        assert k_ss.shape == (8, 8) and k_ts.shape == (5, 8)
        torch.testing.assert_close(k_ss, k_ss.T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(k_ts, k_ss[:5], rtol=1e-4, atol=1e-6)
        eig = torch.linalg.eigvalsh(k_ss.double())
        assert eig.min() > -1e-5 * eig.max()


def test_ntk_kernel_gradient_reaches_the_support_images():
    torch.manual_seed(0)
    net = get_model("convnet-w32", 1, 10, 8)
    xs = torch.randn(4, 1, 8, 8, requires_grad=True)
    k_ss, k_ts = ntk_kernel([net], xs, torch.randn(6, 1, 8, 8))
    kip_loss(k_ts, k_ss, centred_one_hot(torch.arange(4) % 2, 10), centred_one_hot(torch.arange(6) % 2, 10),
             1e-6).backward()
    assert xs.grad is not None and torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0


def test_kip_distils_digits_and_changes_images_and_labels(digits):
    real, _ = digits
    kw = {"config": TINY, "seed": 3, "device": "cpu", "progress": False}
    init = ddkit.distill(real, "kip", 2, iterations=0, **kw)
    out = ddkit.distill(real, "kip", 2, iterations=2, **kw)
    # pixel space, unclamped (as the artifact stores every method's set); two steps of lr 1e-3 stay near [0, 1]
    assert out.images.shape == (20, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.images.min() > -0.05 and out.images.max() < 1.05
    assert out.labels.dtype == torch.float32 and out.labels.shape == (20, 10)
    assert (out.images - init.images).abs().max() > 1e-4  # AdaBelief lr 1e-3: ~1e-3 per step (std units)
    assert (out.labels - init.labels).abs().max() > 1e-4
    torch.testing.assert_close(init.labels, centred_one_hot(torch.arange(10).repeat_interleave(2), 10))
    assert out.extra["iterations"] == 2 and out.extra["seconds"] >= 0


def test_kip_without_label_learning_gives_hard_int64_labels(digits):
    real, _ = digits
    out = ddkit.distill(real, "kip", 1, iterations=1, config={**TINY, "learn_labels": False}, seed=0,
                        device="cpu", progress=False)
    assert out.labels.dtype == torch.int64
    assert torch.equal(out.labels, torch.arange(10))


def test_kip_resume_equals_unbroken_run(digits, tmp_path):
    real, _ = digits
    kw = {"config": TINY, "seed": 5, "device": "cpu", "progress": False}
    whole = ddkit.distill(real, "kip", 1, iterations=3, **kw)
    ck = tmp_path / "kip.ckpt"
    ddkit.distill(real, "kip", 1, iterations=2, checkpoint=ck, **kw)
    from ddkit.distill.base import Checkpoint

    saved = Checkpoint.read(ck).tensors
    # AdaBelief state of the images (0), labels (1), pixel transform (2) and Platt τ (3)
    assert {"t.syn", "t.labels", "t.transform", "t.log_temperature"} <= set(saved)
    assert {f"o.img.{i}.{key}" for i in range(4) for key in ("exp_avg", "exp_avg_var", "step")} <= set(saved)
    assert float(saved["o.img.0.step"]) == 2.0
    resumed = ddkit.distill(real, "kip", 1, iterations=3, checkpoint=ck, resume=True, **kw)
    assert resumed.extra["iterations_run"] == 1
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.labels, whole.labels, rtol=0, atol=1e-6)
    assert resumed.extra["platt_log_temperature"] == whole.extra["platt_log_temperature"] != 0.0


def test_tabular_kernels_psd():
    x = torch.randn(9, 3, dtype=torch.float64)
    for k in (rbf_kernel(x, x, 1.3), relu_nngp_kernel(x, x)):
        torch.testing.assert_close(k, k.T)
        assert torch.linalg.eigvalsh(k).min() > -1e-9


def _krr_rmse(Xs, ys, Xte, yte, Xtr_all, kernel):
    mx, sx = Xtr_all.mean(0), Xtr_all.std(0)
    from ddkit.spectral.loss import krr_predict_kernel

    a = torch.as_tensor((Xs - mx) / sx)
    b = torch.as_tensor((Xte - mx) / sx)
    h = median_bandwidth(torch.as_tensor((Xtr_all - mx) / sx))
    kf = (lambda p, q: rbf_kernel(p, q, h)) if kernel == "rbf" else relu_nngp_kernel
    kss = kf(a, a)
    pred = krr_predict_kernel(kf(b, a), kss, torch.as_tensor(ys)[:, None], 1e-3 * float(torch.trace(kss)) / len(ys))
    return float(np.sqrt(np.mean((pred[:, 0].numpy() - yte) ** 2)))


def test_kip_tabular_shapes_and_beats_random_rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: threads only add contention
    try:
        _tabular_check()
    finally:
        torch.set_num_threads(threads)


def _tabular_check():
    gaps = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = rng.uniform(-2, 2, size=(180, 2))
        y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2 + 0.1 * rng.normal(size=180)
        Xtr, ytr, Xte, yte = X[:120], y[:120], X[120:], y[120:]
        for kernel in ("rbf", "nngp"):
            Xs, ys = kip_tabular(Xtr, ytr, 8, kernel=kernel, iterations=40, lr=0.05, seed=seed)
            assert Xs.shape == (8, 2) and ys.shape == (8,)
            assert np.isfinite(Xs).all() and np.isfinite(ys).all()
            idx = np.random.default_rng(100 + seed).choice(120, 8, replace=False)
            gaps.append(_krr_rmse(Xtr[idx], ytr[idx], Xte, yte, Xtr, kernel)
                        - _krr_rmse(Xs, ys, Xte, yte, Xtr, kernel))
    assert np.mean(gaps) > 0, gaps


def test_kip_defaults_are_rfads():
    """yolky/RFAD run_distillation.py / distillation.py / models.py (module docstring cites lines)."""
    c = KIPConfig()
    assert (c.lr_img, c.reg, c.num_models, c.batch_real, c.real_batches) == (1e-3, 5e-3, 8, 1280, 4)
    assert (c.optimizer, c.loss, c.learn_labels, c.kernel, c.model, c.width, c.depth) == \
        ("adabelief", "platt", True, "nngp", "rfad", 256, 3)
    assert (c.w_var, c.b_var, c.lr_temperature, c.lr_transform, c.learn_transform, c.real_sampling) == \
        (2.0, 0.01, 1e-2, 5e-5, True, "uniform")


def test_rfad_convnet_has_no_norm_and_he_gaussian_init():
    net = RFADConvNet(1, 10, 28, width=256, depth=3, generator=torch.Generator().manual_seed(0)).requires_grad_(False)
    assert not any(isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm)) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.padding for c in convs] == [(1, 1)] * 3 and net.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 256 * 9)
    for c in convs[1:]:  # enough weights for a tight estimate of the law
        assert abs(float(c.weight.std()) / (2 / c.weight[0].numel()) ** 0.5 - 1) < 0.02
        assert abs(float(c.weight.mean())) < 0.02 * (2 / c.weight[0].numel()) ** 0.5
        assert abs(float(c.bias.std()) / 0.1 - 1) < 0.15
    same = RFADConvNet(1, 10, 28, width=256, depth=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same.features[0].weight, convs[0].weight)


def test_nngp_kernel_is_rfads_two_phi_phi_plus_bias():
    g = torch.Generator().manual_seed(1)
    nets = [RFADConvNet(1, 10, 8, width=16, depth=2, generator=g) for _ in range(3)]
    xs, xt = torch.randn(5, 1, 8, 8), torch.randn(7, 1, 8, 8)
    k_ss, k_ts = nngp_feature_kernel([n.embed for n in nets], xs, xt)
    # RFAD: concatenate the models' features, divide by sqrt(M·D), K = 2 ΦΦᵀ + 0.01
    phi_s = torch.cat([n.embed(xs) for n in nets], 1) / (3 * nets[0].feature_dim) ** 0.5
    phi_t = torch.cat([n.embed(xt) for n in nets], 1) / (3 * nets[0].feature_dim) ** 0.5
    torch.testing.assert_close(k_ss, 2 * phi_s @ phi_s.T + 0.01, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k_ts, 2 * phi_t @ phi_s.T + 0.01, rtol=1e-5, atol=1e-6)


def test_platt_loss_is_cross_entropy_of_scaled_krr_prediction():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    k_ss, k_ts = a @ a.T + 0.01, b @ a.T + 0.01
    y_s, c_t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randint(3, (9,), generator=g)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    ridge = 5e-3 * torch.trace(k_ss) / 6
    pred = k_ts @ torch.linalg.solve(k_ss + ridge * torch.eye(6, dtype=torch.float64), y_s)
    direct = torch.nn.functional.cross_entropy(torch.exp(torch.tensor(0.7, dtype=torch.float64)) * pred, c_t)
    loss = kip_platt_loss(k_ts, k_ss, y_s, c_t, 5e-3, tau)
    torch.testing.assert_close(loss, direct, rtol=1e-8, atol=1e-10)
    loss.backward()
    assert tau.grad is not None and float(tau.grad) != 0.0


def test_adabelief_matches_its_update_rule():
    from ddkit.optim import AdaBelief

    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = AdaBelief([p], lr=0.1, eps=1e-16)
    m = s = torch.zeros(2, dtype=torch.float64)
    ref = p.detach().clone()
    for t, grad in enumerate(([0.5, -1.0], [0.2, 3.0], [-0.4, 0.1]), start=1):
        g = torch.tensor(grad, dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        s = 0.999 * s + 0.001 * (g - m) ** 2 + 1e-16
        ref = ref - 0.1 / (1 - 0.9 ** t) * m / (s.sqrt() / (1 - 0.999 ** t) ** 0.5 + 1e-16)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)


def test_kip_mse_adam_balanced_options_still_run(digits):
    real, _ = digits
    cfg = {**TINY, "loss": "mse", "optimizer": "adam", "real_sampling": "balanced", "learn_transform": False,
           "model": "convnet-w32", "w_var": 1.0, "b_var": 0.0}
    out = ddkit.distill(real, "kip", 1, iterations=2, config=cfg, seed=0, device="cpu", progress=False)
    assert out.labels.shape == (10, 10) and torch.isfinite(out.images).all()
    assert out.extra["loss"] == "mse" and out.extra["platt_log_temperature"] == 0.0
