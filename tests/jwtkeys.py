"""Keys and tokens for the JWT tests: made here, never stored in the project."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


@dataclass(frozen=True)
class KeyPair:
    """A signing key and the public key (PEM) a server checks with."""

    algorithm: str
    private: Any
    public_pem: bytes

    def sign(self, claims: dict[str, Any], **kwargs: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, **kwargs)

    def write(self, directory: Path, name: str = "jwt-public.pem") -> Path:
        path = directory / name
        path.write_bytes(self.public_pem)
        return path


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@cache
def rsa_pair() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair("RS256", key, _pem(key.public_key()))


@cache
def ec_pair(curve_name: str = "secp256r1") -> KeyPair:
    curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[curve_name]
    key = ec.generate_private_key(curve)
    algorithm = {"secp256r1": "ES256", "secp384r1": "ES384"}[curve_name]
    return KeyPair(algorithm, key, _pem(key.public_key()))


@cache
def ed25519_pair() -> KeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    return KeyPair("EdDSA", key, _pem(key.public_key()))


def new_secret() -> bytes:
    return secrets.token_urlsafe(32).encode()


def claims(sub: str = "alice", lifetime: float = 300, **more: Any) -> dict[str, Any]:
    """A token's claims: ``sub``, an ``exp`` ``lifetime`` seconds from now,
    and ``more``."""
    return {"sub": sub, "exp": time.time() + lifetime, **more}


def hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed by hand with any bytes as the secret (PyJWT
    rightly refuses to use a PEM public key as one)."""
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def unsigned(payload: dict[str, Any]) -> str:
    """A token with ``alg: none`` and no signature."""
    return _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(payload).encode()) + "."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
