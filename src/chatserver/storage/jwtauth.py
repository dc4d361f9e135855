"""Sign-in with a JSON Web Token that the application's backend minted.

The application that already signed its user in gives the browser a short
JWT (``sub``: the user id, ``exp``: when it stops being valid, ``name``: the
display name if it likes); the browser sends it as ``{"token": "<jwt>"}`` to
``authorize``. :class:`JWTAuthorizer` checks it with PyJWT against one key,
whose kind alone fixes the algorithm a token may use: an HMAC secret allows
HS256 only, an RSA public key RS256, an EC public key ES256 (P-256), ES384
(P-384) or ES512 (P-521), an Ed25519 or Ed448 public key EdDSA. The token's
own ``alg`` header can never pick another (``none`` included).

The user object is the token's whole claim set with ``id`` set to ``sub``;
its ``exp`` makes the server end the session at that time (see
:meth:`chatserver.handlers.ChatHandler.authorize`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserver.interfaces import IAuthorizer
from chatserver.logs import Throttle, escape

#: The shortest HMAC secret accepted: RFC 7518 (3.2) asks for a key as long
#: as the hash's output, 256 bits for HS256.
MIN_SECRET_BYTES = 32
#: The smallest RSA key accepted (RFC 7518, 3.3).
MIN_RSA_BITS = 2048
#: Tokens longer than this are refused unread.
MAX_TOKEN_LENGTH = 8192
#: The longest user id (``sub``) accepted, as for ids on the wire.
MAX_SUBJECT_LENGTH = 256

_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_SECRET_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'

#: What PyJWT verifies a signature with: an HMAC secret or a public key.
VerifyingKey = (
    bytes
    | rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)


def algorithm_for(key: object) -> str:
    """The one JWT algorithm a key allows.

    :param key: an HMAC secret (``bytes``) or a public key object from
        ``cryptography``.
    :raise ValueError: for a key that is too weak or of a kind JWT does not
        sign with, in one sentence saying what to use instead.
    """
    if isinstance(key, bytes):
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(
                f"an HMAC secret must be at least {MIN_SECRET_BYTES} bytes long "
                f"(make one with: {_SECRET_HINT})"
            )
        return "HS256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key must have at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise ValueError(
                f"EC keys on {key.curve.name} cannot sign JWTs: use P-256, P-384 or P-521"
            )
        return algorithm
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ValueError(
        f"a {type(key).__name__} cannot check JWTs: give an HMAC secret or an RSA, EC "
        "or Ed25519 public key"
    )


def load_key(data: bytes) -> VerifyingKey:
    """Read a key file's content: a PEM public key (or certificate), or else
    an HMAC secret (surrounding whitespace, such as a final newline, is not
    part of it).

    :raise ValueError: for a private key, unreadable PEM or a short secret,
        in one sentence.
    """
    text = data.strip()
    if not text.startswith(b"-----BEGIN "):
        algorithm_for(text)  # checks its length
        return text
    label = text.split(b"\n", 1)[0]
    if b"PRIVATE KEY" in label:
        raise ValueError(
            "it holds a private key: give the chat server the public key only "
            "(openssl pkey -in private.pem -pubout -out public.pem)"
        )
    try:
        if b"CERTIFICATE" in label:
            key: object = x509.load_pem_x509_certificate(text).public_key()
        else:
            key = serialization.load_pem_public_key(text)
    except ValueError as e:
        raise ValueError(f"it is not a PEM public key or certificate we can read ({e})") from None
    algorithm_for(key)
    return key  # type: ignore[return-value]  # checked by algorithm_for


class _WallClock:
    """What :class:`Throttle` needs of a clock, when no reactor is given."""

    @staticmethod
    def seconds() -> float:
        return time.time()


@implementer(IAuthorizer)
class JWTAuthorizer:
    """Authorizes ``{"token": "<jwt>"}`` signed with one key.

    A token is accepted when its signature checks with the key under the
    key's algorithm, it has ``sub`` (a non-empty string of at most 256
    characters) and ``exp`` (a number, not yet past), and ``aud`` and
    ``iss`` match when an audience and an issuer are configured (a token
    carrying ``aud`` needs an audience configured). ``nbf`` and ``iat``, if
    present, must not be in the future. Anything else fires with ``None``
    (``authorizationFailed`` for the client).

    Combine it with any message store::

        CombinedStorage(authorizer=JWTAuthorizer(secret), messages=store, groups=store)
        AuthorizerOverride(store, JWTAuthorizer(public_key))  # keeps the store's extras
    """

    def __init__(
        self,
        key: str | bytes | VerifyingKey,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        clock: Any = None,
    ) -> None:
        """
        :param key: an HMAC secret, a PEM public key or certificate (as
            ``str`` or ``bytes``: :func:`load_key` tells them apart), or a
            public key object from ``cryptography``.
        :param audience: the ``aud`` a token must carry (None: a token must
            carry none).
        :param issuer: the ``iss`` a token must carry (None: not checked).
        :param leeway: seconds of clock difference with the issuer allowed
            on ``nbf`` and ``iat``. It does not lengthen a session: one ends
            at ``exp`` by this server's clock, and a token already past its
            ``exp`` is refused.
        :param clock: what logs are throttled on (an
            ``IReactorTime``; the wall clock by default).
        :raise ValueError: for a key that cannot check JWTs (see
            :func:`algorithm_for`), or a negative leeway.
        """
        if isinstance(key, str):
            key = key.encode()
        if isinstance(key, bytes):
            key = load_key(key)
        self.algorithm = algorithm_for(key)
        if leeway < 0 or not math.isfinite(leeway):
            raise ValueError("the leeway must be a non-negative number of seconds")
        self._key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._decoder = jwt.PyJWT({"require": ["exp", "sub"]})
        self._throttle = Throttle(clock or _WallClock())  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> JWTAuthorizer:
        """A :class:`JWTAuthorizer` with the key in file ``path``.

        :param kwargs: as for the constructor.
        :raise ValueError: for a file that is missing, unreadable or holds
            no usable key, in one sentence naming it.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read the JWT key file {str(path)!r}: {e.strerror}") from None
        try:
            key = load_key(data)
        except ValueError as e:
            raise ValueError(f"the JWT key file {str(path)!r} is not usable: {e}") from None
        return cls(key, **kwargs)

    def __repr__(self) -> str:
        return f"<JWTAuthorizer {self.algorithm}>"

    def authorize(self, credentials: dict[str, Any]) -> Deferred[dict[str, Any] | None]:
        """:return: a Deferred firing with the claims (and ``id``: ``sub``),
        or with ``None`` for any token that does not pass."""
        token = credentials.get("token")
        if type(token) is not str or not 0 < len(token) <= MAX_TOKEN_LENGTH:
            return succeed(None)
        try:
            claims = self._decoder.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except jwt.PyJWTError as e:
            self._refused(type(e).__name__, str(e))
            return succeed(None)
        return succeed(self._user(claims))

    def _user(self, claims: Mapping[str, Any]) -> dict[str, Any] | None:
        # PyJWT reads exp with int(), which takes "123" too: the session's
        # deadline must be a number.
        sub, exp = claims["sub"], claims["exp"]
        if type(exp) not in (int, float) or not math.isfinite(exp):
            self._refused("exp", "exp is not a number")
            return None
        if type(sub) is not str or not 0 < len(sub) <= MAX_SUBJECT_LENGTH:
            self._refused("sub", f"sub must be 1 to {MAX_SUBJECT_LENGTH} characters")
            return None
        return {**claims, "id": sub}

    def _refused(self, kind: str, why: str) -> None:
        self._throttle.info(f"jwt:{kind}", "JWT refused: {why}", why=escape(why))
