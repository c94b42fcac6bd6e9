"""Import of other tools' distilled sets (dc, mtt, npz, imagefolder) and export; never run code."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit.cli import app
from ddkit.errors import ArtifactError, ConfigError
from ddkit.interop import import_set


@pytest.fixture(scope="module")
def real(digits):
    return digits[0]


@pytest.fixture(scope="module")
def rnd(real):
    return ddkit.distill(real, "random", 2, seed=0, progress=False)


def _std(real, x):
    return (x - torch.tensor(real.mean).view(-1, 1, 1)) / torch.tensor(real.std).view(-1, 1, 1)


def test_dc_file_with_numpy_accuracies_round_trips(real, rnd, tmp_path):
    p = tmp_path / "res_DM_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[_std(real, rnd.images), rnd.labels], [_std(real, rnd.images.flip(-1)), rnd.labels]],
                "accs_all_exps": {"ConvNet": [np.float64(0.5), np.float64(0.6)]}}, p)
    back = import_set("dc", p, "digits", train=real)
    assert back.method == "dm" and back.label_kind == "hard" and torch.equal(back.labels, rnd.labels)
    torch.testing.assert_close(back.images, rnd.images, rtol=0, atol=1e-6)
    assert back.extra["import"]["sha256"][0] == __import__("hashlib").sha256(p.read_bytes()).hexdigest()
    second = import_set("dc", p, "digits", exp=1, train=real)
    torch.testing.assert_close(second.images, rnd.images.flip(-1), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="experiments"):
        import_set("dc", p, "digits", exp=2, train=real)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/ddkit-pwned-by-import",))


def test_a_pickle_payload_is_refused_and_never_runs(real, tmp_path):
    import os

    marker = "/tmp/ddkit-pwned-by-import"
    if os.path.exists(marker):
        os.unlink(marker)
    p = tmp_path / "res_DM_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]], "x": _Payload()}, p)
    with pytest.raises(ArtifactError, match="plain data"):
        import_set("dc", p, "digits", train=real)
    (tmp_path / "m").mkdir()
    torch.save(_Payload(), tmp_path / "m" / "images_best.pt")
    torch.save(torch.zeros(2), tmp_path / "m" / "labels_best.pt")
    with pytest.raises(ArtifactError, match="plain data"):
        import_set("mtt", tmp_path / "m", "digits", train=real)
    np.savez(tmp_path / "o.npz", images=np.array([object()], dtype=object), labels=np.zeros(1))
    with pytest.raises(ArtifactError, match="plain data"):
        import_set("npz", tmp_path / "o.npz", "digits", train=real)
    assert not os.path.exists(marker)


def test_mtt_folder_with_lr_and_zca(real, rnd, tmp_path):
    from kornia.enhance import ZCAWhitening

    folder = tmp_path / "mtt"
    folder.mkdir()
    zca = ZCAWhitening(eps=0.1, compute_inv=True).fit(real.normalize(real.float_images()))
    torch.save(zca(_std(real, rnd.images)), folder / "images_best.pt")
    torch.save(rnd.labels, folder / "labels_best.pt")
    torch.save(torch.tensor(0.0123), folder / "lr_best.pt")
    with pytest.raises(ArtifactError, match="ZCA"):  # taken as it is, the ZCA space is not pixels
        import_set("mtt", folder, "digits", train=real)
    back = import_set("mtt", folder, "digits", zca=True, train=real)
    torch.testing.assert_close(back.images, rnd.images, rtol=0, atol=1e-4)
    assert float(back.lr) == pytest.approx(0.0123) and back.extra["import"]["zca_inverted"]


def test_npz_nhwc_one_hot_and_learned_targets(real, rnd, tmp_path):
    x = _std(real, rnd.images).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "kip.npz", images=x, labels=np.eye(10)[rnd.labels.numpy()])
    back = import_set("npz", tmp_path / "kip.npz", "digits", train=real)
    assert back.label_kind == "hard" and torch.equal(back.labels, rnd.labels)
    torch.testing.assert_close(back.images, rnd.images, rtol=0, atol=1e-6)
    learned = np.eye(10)[rnd.labels.numpy()] * 0.9 - 0.05
    np.savez(tmp_path / "frepo.npz", x_proto=x, y_proto=learned)
    with pytest.raises(ConfigError, match="label_kind"):
        import_set("npz", tmp_path / "frepo.npz", "digits", train=real)
    back = import_set("npz", tmp_path / "frepo.npz", "digits", label_kind="regression", train=real)
    assert back.label_kind == "regression" and back.labels.shape == (20, 10)
    np.savez(tmp_path / "bad.npz", images=x[:, :4], labels=rnd.labels.numpy())
    with pytest.raises(ArtifactError, match="shape"):
        import_set("npz", tmp_path / "bad.npz", "digits", train=real)


def test_export_and_import_round_trip_through_the_cli(rnd, tmp_path):
    runner = CliRunner()
    src = tmp_path / "s.safetensors"
    rnd.save(src)
    res = runner.invoke(app, ["export", str(src), "--to", "imagefolder", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "png").rglob("*.png"))) == 20
    res = runner.invoke(app, ["import", str(tmp_path / "png"), "--from", "imagefolder", "--dataset", "digits",
                              "--out", str(tmp_path / "back.safetensors")])
    assert res.exit_code == 0, res.output
    back = ddkit.DistilledSet.load(tmp_path / "back.safetensors")
    assert torch.equal(back.labels, rnd.labels) and (back.images - rnd.images).abs().max() <= 0.5 / 255 + 1e-6
    res = runner.invoke(app, ["export", str(src), "--to", "pt", str(tmp_path / "pt")])
    assert res.exit_code == 0, res.output
    images = torch.load(tmp_path / "pt" / "images.pt", weights_only=True)
    torch.testing.assert_close(images, rnd.normalized_images())
    bad = runner.invoke(app, ["import", str(tmp_path / "png"), "--from", "zip", "--dataset", "digits", "--out",
                              str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "unknown import format" in bad.stderr and not (tmp_path / "x.safetensors").exists()
    assert json.loads(json.dumps(back.extra))["import"]["format"] == "imagefolder"
