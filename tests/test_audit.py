"""`ddkit audit`: privacy (with an audit split and shadows), robustness, fairness, the report."""

import json

import pytest
from typer.testing import CliRunner

import ddkit
from ddkit.audit.privacy import member_split
from ddkit.cli import app
from ddkit.errors import ConfigError


def test_member_split_is_a_seeded_half():
    m, p = member_split(11, 3)
    assert len(m) == 5 and len(p) == 6 and set(m.tolist()).isdisjoint(p.tolist())
    assert set(m.tolist()) | set(p.tolist()) == set(range(11)) and member_split(11, 3)[0].equal(m)


@pytest.mark.e2e
def test_audit_through_the_cli_writes_json_and_a_self_contained_page(tmp_path):
    runner = CliRunner()
    s = tmp_path / "s.safetensors"
    res = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "random", "--ipc", "10", "--out",
                              str(s), "--audit-split", "7", "--quiet"])
    assert res.exit_code == 0, res.output
    ds = ddkit.DistilledSet.load(s)
    members, _ = member_split(len(ddkit.load_dataset("digits")), 7)
    assert ds.extra["audit_split"]["seed"] == 7 and set(ds.extra["source_indices"]) <= set(range(len(members)))
    res = runner.invoke(app, ["audit", str(s), "--out", str(tmp_path / "a"), "--model", "convnet-w32", "--runs",
                              "1", "--epochs", "20", "--shadows", "2", "--shadow-epochs", "5", "--examples", "200",
                              "--eps", "0.03,0.1", "--corruptions", "gaussian_noise,contrast", "--test-images",
                              "100", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "a" / "audit.json").read_text())
    priv = data["privacy"]["distilled"]
    assert 0 <= priv["threshold"]["auc"] <= 1 and priv["lira_offline"] is not None and priv["shadows"] == 2
    assert set(data["robustness"]) == {"distilled", "random"} and data["fairness"]["reference"] == "random"
    assert data["seconds"]["total"] > 0 and data["settings"]["eps"] == [0.03, 0.1]
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page.replace("https://", "")
    assert "Membership inference" in page and "Fairness" in page


def test_audit_bad_inputs(tmp_path):
    runner = CliRunner()
    s = tmp_path / "s.safetensors"
    ddkit.distill(ddkit.load_dataset("digits"), "random", 2, seed=0, progress=False).save(s)
    for args, text in ((["--parts", "privacy"], "audit split"), (["--parts", "speed"], "unknown audit parts"),
                       (["--parts", "robustness", "--eps", "2"], "ε"), (["--eps", "x"], "--eps"),
                       (["--parts", "robustness", "--corruptions", "rain"], "corruptions")):
        res = runner.invoke(app, ["audit", str(s), "--out", str(tmp_path / "a"), *args])
        assert res.exit_code == 2 and text in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "a").exists()
    from ddkit.audit.report import audit

    with pytest.raises(ConfigError, match="runs"):
        audit(s, parts=("fairness",), runs=0)
