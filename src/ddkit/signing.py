"""Signed distilled sets: Ed25519 signatures over a set's canonical digest (``cryptography``).

A distilled set travels from whoever made it to whoever trains on it. Its SHA-256
(:func:`ddkit.io.tensor_digest`, over every tensor and the header) detects accidents, but
anyone who alters a set can recompute it. A signature by the maker's private key over that
digest cannot be recomputed without the key:

* ``ddkit keygen --out PREFIX`` writes ``PREFIX.key`` (PKCS#8 PEM, private, mode 0600) and
  ``PREFIX.pub`` (SubjectPublicKeyInfo PEM, to hand out);
* ``ddkit sign FILE --key KEY`` signs ``b"ddkit-signature/1\\n" + digest`` and stores the
  signature inside the file (safetensors metadata ``signature``: JSON with the base64
  signature and the key's fingerprint; the file is rewritten atomically, its tensors and
  header unchanged) or, with ``--detached``, beside it as ``FILE.sig``;
* ``ddkit verify FILE --pubkey PUB``, and ``--pubkey`` on every command that reads a set
  (``DistilledSet.load(path, public_key=...)``), refuse a set that is unsigned, signed by
  another key, or whose bytes changed after signing.

The fingerprint of a key is the SHA-256 of its raw 32-byte public key, in hex (first 16
digits shown). All cryptography is the ``cryptography`` package's; nothing home-made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors.torch import load_file, save_file

from ddkit import io
from ddkit.errors import ArtifactError, ConfigError
from ddkit.utils import atomic_path, check_writable

__all__ = ["SIGNATURE_FORMAT", "fingerprint", "generate_keys", "load_private_key", "load_public_key", "sign_file",
           "verify_file"]

SIGNATURE_FORMAT = "ddkit.signature/1"
SIGNATURE_KEY = "signature"
_DOMAIN = b"ddkit-signature/1\n"


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keys(prefix: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``.

    Raises:
        OutputError: the files cannot be written. ConfigError: ``PREFIX.key`` exists (a key
            is never overwritten).
    """
    p = Path(prefix)
    key_path, pub_path = p.with_name(p.name + ".key"), p.with_name(p.name + ".pub")
    if key_path.exists():
        raise ConfigError(f"{str(key_path)!r} exists; keys are never overwritten (choose another --out)")
    check_writable(key_path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with atomic_path(key_path) as tmp:
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o600)
    os.chmod(key_path, 0o600)
    with atomic_path(pub_path) as tmp:
        tmp.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path


def _read_pem(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist or is not a file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc.strerror}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file (from :func:`generate_keys`).

    Raises:
        ConfigError: missing, unreadable, malformed, or not an Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(_read_pem(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{str(path)!r} is not a private key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{str(path)!r} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (``PREFIX.pub``).

    Raises:
        ConfigError: missing, unreadable, malformed, or not an Ed25519 public key (a private
            key given by mistake is named as such).
    """
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{str(path)!r} is a private key; verify with the public key (PREFIX.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{str(path)!r} is not a public key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{str(path)!r} is not an Ed25519 public key")
    return key


def _metadata(path: Path) -> dict[str, str]:
    return io.read_metadata(path, "distilled set")


def sign_file(path: str | Path, key: str | Path | Ed25519PrivateKey, *, detached: bool = False) -> Path:
    """Sign a ddkit file (a distilled set) with an Ed25519 private key.

    The file is verified first (hash and format); the signature covers its digest. Inside
    (default): the file is rewritten atomically with the signature in its metadata. Detached:
    ``FILE.sig`` is written (JSON: format, digest, base64 signature, key fingerprint).

    Returns:
        The path holding the signature (the file itself, or ``FILE.sig``).

    Raises:
        ArtifactError: not a valid distilled set (tampered, unreadable).
        ConfigError: a bad key file. OutputError: cannot write.
    """
    from ddkit.artifact import FORMAT, FORMAT_V1

    p = Path(path)
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    io.read(p, (FORMAT, FORMAT_V1), what="distilled set")  # hash and format checked before signing
    digest = _metadata(p)[io.HASH_KEY]
    record = {"format": SIGNATURE_FORMAT, "digest": digest,
              "signature": base64.b64encode(private.sign(_DOMAIN + digest.encode())).decode(),
              "key": fingerprint(private.public_key())}
    if detached:
        target = p.with_name(p.name + ".sig")
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        return target
    meta = _metadata(p)
    tensors = load_file(str(p))
    meta[SIGNATURE_KEY] = json.dumps(record, sort_keys=True)
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return p


def _signature_record(p: Path, meta: dict[str, str]) -> dict[str, Any]:
    raw = meta.get(SIGNATURE_KEY)
    sig_file = p.with_name(p.name + ".sig")
    if raw is None and sig_file.is_file():
        try:
            raw = sig_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"signature file {str(sig_file)!r} cannot be read: {exc}") from None
    if raw is None:
        raise ArtifactError(f"{str(p)!r} is not signed (no signature inside it and no {sig_file.name} beside it); "
                            f"refused because a public key was given")
    try:
        rec = json.loads(raw)
        if rec.get("format") != SIGNATURE_FORMAT or not isinstance(rec.get("signature"), str):
            raise ValueError("not a ddkit signature")
        return rec
    except (ValueError, AttributeError) as exc:
        raise ArtifactError(f"the signature of {str(p)!r} is malformed ({exc})") from None


def verify_file(path: str | Path, public_key: str | Path | Ed25519PublicKey) -> dict[str, Any]:
    """Check that a distilled set is unchanged since it was signed by ``public_key``'s owner.

    Verifies the file's hash (every tensor and the header) and the Ed25519 signature over
    that digest (inside the file, else ``FILE.sig``).

    Returns:
        ``{"key": fingerprint, "digest": sha256, "where": "inside" | "FILE.sig"}``.

    Raises:
        ArtifactError: unsigned, signed by another key, a signature for another file, a
            malformed signature, or bytes changed (the hash or the signature fails).
        ConfigError: a bad public key file.
    """
    from ddkit.artifact import FORMAT, FORMAT_V1

    p = Path(path)
    public = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    io.read(p, (FORMAT, FORMAT_V1), what="distilled set")  # the digest matches the contents
    meta = _metadata(p)
    rec = _signature_record(p, meta)
    digest = meta[io.HASH_KEY]
    if rec.get("digest") != digest:
        raise ArtifactError(f"the signature of {str(p)!r} is for another file or an earlier version of it "
                            f"(its digest differs): the set changed after it was signed")
    if rec.get("key") != fingerprint(public):
        raise ArtifactError(f"{str(p)!r} was signed by key {str(rec.get('key'))[:16]}…, not by the given key "
                            f"{fingerprint(public)[:16]}…")
    try:
        public.verify(base64.b64decode(rec["signature"], validate=True), _DOMAIN + digest.encode())
    except (InvalidSignature, ValueError):
        raise ArtifactError(f"the signature of {str(p)!r} is invalid: the set or its signature was altered") \
            from None
    where = "inside" if SIGNATURE_KEY in meta else p.name + ".sig"
    return {"key": rec["key"], "digest": digest, "where": where}
