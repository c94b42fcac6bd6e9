"""Signed distilled sets: every change after signing is refused, and bad keys are one clear line."""

import json

import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit import io
from ddkit.artifact import DistilledSet
from ddkit.cli import app
from ddkit.errors import ArtifactError, ConfigError
from ddkit.signing import generate_keys, sign_file, verify_file

runner = CliRunner()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keys(d / "alice"), generate_keys(d / "mallory")


@pytest.fixture()
def signed(digits, keys, tmp_path):
    real, _ = digits
    p = tmp_path / "s.safetensors"
    ddkit.distill(real, "random", 1, seed=0, progress=False).save(p)
    sign_file(p, keys[0][0])
    return p


def test_sign_verify_and_load_with_a_public_key(signed, keys, tmp_path):
    (alice_key, alice_pub), (_, mallory_pub) = keys
    assert verify_file(signed, alice_pub)["where"] == "inside"
    ds = DistilledSet.load(signed, public_key=alice_pub)
    assert ds.images.shape == (10, 1, 8, 8)
    DistilledSet.load(signed)  # without a key: only the hash is checked
    with pytest.raises(ArtifactError, match="not by the given key"):
        DistilledSet.load(signed, public_key=mallory_pub)
    unsigned = tmp_path / "u.safetensors"
    ds.save(unsigned)
    with pytest.raises(ArtifactError, match="not signed"):
        verify_file(unsigned, alice_pub)
    # detached: FILE.sig beside it
    sign_file(unsigned, alice_key, detached=True)
    assert verify_file(unsigned, alice_pub)["where"] == "u.safetensors.sig"


def test_every_flipped_byte_is_refused(signed, keys, tmp_path):
    """All bytes of a small signed set, one at a time: none loads under the public key."""
    pub = keys[0][1]
    raw = signed.read_bytes()
    bad = tmp_path / "b.safetensors"
    accepted = []
    for i in range(len(raw)):
        data = bytearray(raw)
        data[i] ^= 0xFF
        bad.write_bytes(bytes(data))
        try:
            DistilledSet.load(bad, public_key=pub)
            accepted.append(i)
        except ArtifactError:
            pass
    assert not accepted, f"flipped bytes accepted at {accepted[:10]} of {len(raw)}"


def test_a_set_altered_and_rehashed_after_signing_is_refused(signed, keys, tmp_path):
    """An attacker who edits the images (as a backdoor attack does) can recompute the hash, not the signature."""
    pub = keys[0][1]
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(signed), framework="pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(signed))
    t["images"] = t["images"].clone()
    t["images"][0, 0, -2:, -2:] = 1.0  # a corner trigger
    meta["sha256"] = io.tensor_digest(t, meta["ddkit"])
    save_file(t, str(tmp_path / "p.safetensors"), metadata=meta)
    DistilledSet.load(tmp_path / "p.safetensors")  # the hash alone is satisfied
    with pytest.raises(ArtifactError, match="changed after it was signed"):
        DistilledSet.load(tmp_path / "p.safetensors", public_key=pub)
    # a signature swapped in from another signed file
    other = tmp_path / "o.safetensors"
    DistilledSet(**{**DistilledSet.load(signed).__dict__, "seed": 5}).save(other)
    sign_file(other, keys[0][0])
    with safe_open(str(other), framework="pt") as f:
        meta["signature"] = f.metadata()["signature"]
    meta["sha256"] = io.tensor_digest(load_file(str(signed)), meta["ddkit"])
    save_file(load_file(str(signed)), str(tmp_path / "swap.safetensors"), metadata=meta)
    with pytest.raises(ArtifactError, match="another file"):
        verify_file(tmp_path / "swap.safetensors", pub)
    rec = json.loads(meta["signature"])
    rec["digest"] = meta["sha256"]  # claim the signature is for this file: the signature check fails
    meta["signature"] = json.dumps(rec)
    save_file(load_file(str(signed)), str(tmp_path / "swap2.safetensors"), metadata=meta)
    with pytest.raises(ArtifactError, match="invalid"):
        verify_file(tmp_path / "swap2.safetensors", pub)


def test_cli_keys_and_bad_inputs(digits, tmp_path):
    real, _ = digits
    s = tmp_path / "s.safetensors"
    ddkit.distill(real, "random", 1, seed=0, progress=False).save(s)
    res = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert oct((tmp_path / "k.key").stat().st_mode)[-3:] == "600"
    assert runner.invoke(app, ["sign", str(s), "--key", str(tmp_path / "k.key")]).exit_code == 0
    res = runner.invoke(app, ["verify", str(s), "--pubkey", str(tmp_path / "k.pub")])
    assert res.exit_code == 0 and "valid signature" in " ".join(res.output.split())
    res = runner.invoke(app, ["info", str(s), "--pubkey", str(tmp_path / "k.pub")])
    assert res.exit_code == 0 and '"method": "random"' in res.output
    for args, text in ((["keygen", "--out", str(tmp_path / "k")], "never overwritten"),
                       (["verify", str(s), "--pubkey", str(tmp_path / "k.key")], "private key"),
                       (["verify", str(s), "--pubkey", str(tmp_path / "none.pub")], "does not exist"),
                       (["sign", str(s), "--key", str(tmp_path / "k.pub")], "not a private key"),
                       (["show", str(s), "--out", str(tmp_path / "g.png"), "--pubkey", str(s)], "not a public key")):
        (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and text in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = runner.invoke(app, ["verify", str(s), "--pubkey", str(tmp_path / "junk.pub")])
    assert res.exit_code == 2 and "not a public key" in res.stderr
    with pytest.raises(ConfigError):
        verify_file(s, tmp_path / "junk.pub")
    assert not (tmp_path / "g.png").exists() and torch.equal(DistilledSet.load(s).labels, torch.arange(10))
