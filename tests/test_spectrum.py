"""The spectrum tool: FFC spectra and FLC band energies, real vs distilled."""

import json

import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit.cli import app
from ddkit.errors import ConfigError
from ddkit.spectral.analysis import spectrum


def test_energies_are_distributions_and_real_matches_itself(digits):
    real, _ = digits
    sub = real.per_class_subset(30, seed=0)
    same = ddkit.DistilledSet(images=sub.float_images(), labels=sub.labels, method="random", dataset="digits",
                              mean=real.mean, std=real.std, class_names=real.class_names, ipc=30)
    r = spectrum(same, real, model="convnet-w32", n_real=300, top_k=5, device="cpu")
    assert abs(sum(r.energy_real) - 1) < 1e-9 and abs(sum(r.energy_distilled) - 1) < 1e-9
    assert r.eig_real == sorted(r.eig_real, reverse=True) and min(r.eig_real) >= 0
    # the distilled set *is* the real subset used: identical statistics, zero mismatch
    assert r.mismatch_low < 1e-9 and r.mismatch_high < 1e-9
    noise = ddkit.DistilledSet(images=torch.rand(10, 1, 8, 8), labels=torch.arange(10), method="noise",
                               dataset="digits", mean=real.mean, std=real.std, class_names=real.class_names, ipc=1)
    r2 = spectrum(noise, real, model="convnet-w32", n_real=300, top_k=5, device="cpu")
    few = real.per_class_subset(10, seed=1)
    real10 = ddkit.DistilledSet(images=few.float_images(), labels=few.labels, method="random", dataset="digits",
                                mean=real.mean, std=real.std, class_names=real.class_names, ipc=10)
    r3 = spectrum(real10, real, model="convnet-w32", n_real=300, top_k=5, device="cpu")
    # uniform noise matches the real FLC worse than 10 real images per class, in both bands
    assert r2.mismatch_low > r3.mismatch_low and r2.mismatch_high > r3.mismatch_high
    with pytest.raises(ConfigError, match="top_k"):
        spectrum(noise, real, model="convnet-w32", n_real=300, top_k=10**6, device="cpu")


def test_cli_writes_json_and_png(tmp_path):
    runner = CliRunner()
    f = tmp_path / "r.safetensors"
    assert runner.invoke(app, ["distill", "--dataset", "digits", "--method", "random", "--ipc", "3", "--out", str(f),
                               "--quiet"]).exit_code == 0
    res = runner.invoke(app, ["spectrum", str(f), "--out", str(tmp_path / "spec"), "--model", "convnet-w32",
                              "--n-real", "200", "--top-k", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "spec" / "spectrum.json").read_text())
    assert data[0]["method"] == "random" and data[0]["top_k"] == 4
    assert (tmp_path / "spec" / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
