import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from ddkit import io
from ddkit.artifact import FORMAT, DistilledSet
from ddkit.errors import ArtifactError, OutputError


def _set(soft=False, lr=None):
    labels = torch.softmax(torch.randn(20, 10), 1) if soft else torch.arange(10).repeat(2)
    return DistilledSet(images=torch.rand(20, 1, 28, 28), labels=labels, method="dm", dataset="fashion-mnist",
                        mean=(0.2861,), std=(0.353,), class_names=[str(i) for i in range(10)], ipc=2,
                        seed=3, config={"lr_img": 1.0}, lr=lr, label_kind="probabilities" if soft else None)


def _header(ds, **change):
    return json.dumps({**ds._meta(), "format": FORMAT, **change}, sort_keys=True)


@pytest.mark.parametrize("soft,lr", [(False, None), (True, 0.01)])
def test_round_trip(tmp_path, soft, lr):
    ds = _set(soft, lr)
    ds.save(tmp_path / "s.safetensors")
    back = DistilledSet.load(tmp_path / "s.safetensors")
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.method == "dm" and back.ipc == 2 and back.seed == 3 and back.config == {"lr_img": 1.0}
    assert back.mean == (0.2861,) and back.soft_labels == soft
    assert (back.lr is None) == (lr is None)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_saved_file_has_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        _set().save(tmp_path / "s.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.safetensors").stat().st_mode) == 0o640  # 0666 minus the umask, not 0600


def test_tampered_file_is_refused(tmp_path):
    p = tmp_path / "s.safetensors"
    _set().save(p)
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the tensor payload
    p.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="SHA-256"):
        DistilledSet.load(p)


def test_metadata_tamper_is_refused(tmp_path):
    ds = _set()
    meta = _header(ds, ipc=50)
    digest = io.tensor_digest(ds._tensors(), _header(ds))
    save_file(ds._tensors(), str(tmp_path / "t.safetensors"), metadata={"ddkit": meta, "sha256": digest})
    with pytest.raises(ArtifactError, match="SHA-256"):
        DistilledSet.load(tmp_path / "t.safetensors")


def test_not_a_distilled_set(tmp_path):
    (tmp_path / "x.safetensors").write_text("hello")
    with pytest.raises(ArtifactError, match="not a distilled set"):
        DistilledSet.load(tmp_path / "x.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ArtifactError, match="not a ddkit distilled set"):
        DistilledSet.load(tmp_path / "w.safetensors")
    with pytest.raises(ArtifactError, match="does not exist"):
        DistilledSet.load(tmp_path / "missing.safetensors")


def test_nan_images_refused_even_with_a_valid_hash(tmp_path):
    ds = _set()
    with pytest.raises(ArtifactError, match="NaN"):
        DistilledSet(**{**ds.__dict__, "images": torch.full((20, 1, 28, 28), float("nan"))})
    tensors = {"images": torch.full((20, 1, 28, 28), float("nan")), "labels": ds.labels}
    meta = _header(ds)
    save_file(tensors, str(tmp_path / "n.safetensors"),
              metadata={"ddkit": meta, "sha256": io.tensor_digest(tensors, meta)})
    with pytest.raises(ArtifactError, match="NaN"):
        DistilledSet.load(tmp_path / "n.safetensors")


def test_bad_shapes_and_unwritable_path(tmp_path):
    ds = _set()
    with pytest.raises(ArtifactError, match="labels"):
        DistilledSet(**{**ds.__dict__, "labels": torch.arange(5)})
    with pytest.raises(ArtifactError, match="0..9"):
        DistilledSet(**{**ds.__dict__, "labels": torch.full((20,), 12)})
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        ds.save(tmp_path / "file" / "sub" / "s.safetensors")


DATA = __import__("pathlib").Path(__file__).parent / "data"


def test_sets_written_by_ddkit_0_1_still_load():
    """Format /1 files (ddkit 0.1.0, kept in tests/data) load; their label kind is derived once."""
    kip = DistilledSet.load(DATA / "v1_kip_fmnist_ipc1.safetensors")
    assert kip.version == "0.1.0" and kip.method == "kip" and kip.label_kind == "regression"
    assert kip.labels.shape == (10, 10) and kip.images.shape == (10, 1, 28, 28)
    cfm = DistilledSet.load(DATA / "v1_cfm_fmnist_ipc1.safetensors")
    assert cfm.label_kind == "hard" and cfm.has_teacher and cfm.teacher_info["model"] == "convnet-w32"


def test_label_kind_is_declared_and_checked(tmp_path):
    with pytest.raises(ArtifactError, match="label_kind"):
        _set(soft=True).__class__(**{**_set(soft=True).__dict__, "label_kind": None})
    with pytest.raises(ArtifactError, match="hard labels"):
        DistilledSet(**{**_set().__dict__, "label_kind": "regression"})
    ds = _set(soft=True)
    ds.label_kind = "regression"
    ds.save(tmp_path / "r.safetensors")
    assert DistilledSet.load(tmp_path / "r.safetensors").label_kind == "regression"


def test_named_extra_tensors_round_trip_and_unknown_versions_are_refused(tmp_path):
    ds = DistilledSet(**{**_set().__dict__, "tensors": {"trigger": torch.ones(1, 3, 3)}})
    ds.save(tmp_path / "x.safetensors")
    back = DistilledSet.load(tmp_path / "x.safetensors")
    assert torch.equal(back.tensors["trigger"], torch.ones(1, 3, 3))
    tensors = back._tensors()
    meta = _header(back, format="ddkit.distilled-set/9")
    save_file(tensors, str(tmp_path / "v9.safetensors"),
              metadata={"ddkit": meta, "sha256": io.tensor_digest(tensors, meta)})
    with pytest.raises(ArtifactError, match="ddkit.distilled-set/9.*upgrade ddkit"):
        DistilledSet.load(tmp_path / "v9.safetensors")
    meta = _header(back, colour="red")
    save_file(tensors, str(tmp_path / "odd.safetensors"),
              metadata={"ddkit": meta, "sha256": io.tensor_digest(tensors, meta)})
    with pytest.raises(ArtifactError, match="unknown header fields"):
        DistilledSet.load(tmp_path / "odd.safetensors")


def test_images_outside_the_pixel_range_are_kept_as_optimised(tmp_path):
    """The reference code never clamps a distilled set; neither does the file: values outside
    [0, 1] round-trip exactly, ``clipped()`` is the [0, 1] copy, NaN is still refused."""
    ds = _set()
    ds.images[0, 0, 0, :3] = torch.tensor([-0.7, 1.8, 0.5])
    ds.save(tmp_path / "s.safetensors")
    back = DistilledSet.load(tmp_path / "s.safetensors")
    assert torch.equal(back.images, ds.images) and back.images.min() == pytest.approx(-0.7)
    assert back.pixel_overflow() == pytest.approx(2 / ds.images.numel())
    clip = back.clipped()
    assert clip.images.min() >= 0 and clip.images.max() <= 1 and clip.extra["clipped"] is True
    assert torch.equal(back.images[0, 0, 0, :3], torch.tensor([-0.7, 1.8, 0.5]))  # the original is untouched
    bad = ds.images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        DistilledSet(**{**ds.__dict__, "images": bad})
