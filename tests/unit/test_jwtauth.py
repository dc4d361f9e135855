"""JWTAuthorizer: which tokens pass, and which key files are usable."""

from __future__ import annotations

import datetime

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from chatserver.storage.jwtauth import JWTAuthorizer, load_key
from tests.jwtkeys import (
    claims,
    ec_pair,
    ed25519_pair,
    hs256,
    new_secret,
    rsa_pair,
    unsigned,
)


def user(authorizer: JWTAuthorizer, token: object):
    return authorizer.authorize({"token": token}).result


SECRET = new_secret()


def test_a_token_signed_with_the_secret_gives_its_claims_as_the_user():
    token_claims = claims("alice", name="Alice", role="admin")
    result = user(JWTAuthorizer(SECRET), hs256(token_claims, SECRET))
    assert result == {**token_claims, "id": "alice"}


@pytest.mark.parametrize("pair", [rsa_pair, ec_pair, ed25519_pair], ids=lambda p: p.__name__)
def test_public_keys_fix_their_algorithm(pair):
    keys = pair()
    authorizer = JWTAuthorizer(keys.public_pem)
    assert authorizer.algorithm == keys.algorithm
    assert user(authorizer, keys.sign(claims("bob")))["id"] == "bob"
    # Signed by someone else's key of the same kind: refused.
    other = JWTAuthorizer(pair.__wrapped__().public_pem)
    assert user(other, keys.sign(claims("bob"))) is None


def test_an_ec_key_on_p384_allows_es384_only():
    keys = ec_pair("secp384r1")
    authorizer = JWTAuthorizer(keys.public_pem)
    assert authorizer.algorithm == "ES384"
    assert user(authorizer, keys.sign(claims()))["id"] == "alice"


@pytest.mark.parametrize(
    ("what", "make_token", "options"),
    [
        ("wrong signature", lambda: hs256(claims(), new_secret()), {}),
        ("alg none", lambda: unsigned(claims()), {}),
        ("no exp", lambda: hs256({"sub": "alice"}, SECRET), {}),
        ("exp passed", lambda: hs256(claims(lifetime=-1), SECRET), {}),
        ("exp not a number", lambda: hs256({"sub": "a", "exp": "99999999999"}, SECRET), {}),
        ("no sub", lambda: hs256({"exp": claims()["exp"]}, SECRET), {}),
        ("sub not a string", lambda: hs256(claims(sub=5), SECRET), {}),
        ("sub empty", lambda: hs256(claims(sub=""), SECRET), {}),
        ("sub too long", lambda: hs256(claims(sub="x" * 257), SECRET), {}),
        ("nbf ahead", lambda: hs256(claims(nbf=claims()["exp"]), SECRET), {}),
        ("aud, none expected", lambda: hs256(claims(aud="chat"), SECRET), {}),
        ("wrong aud", lambda: hs256(claims(aud="other"), SECRET), {"audience": "chat"}),
        ("no aud", lambda: hs256(claims(), SECRET), {"audience": "chat"}),
        ("wrong iss", lambda: hs256(claims(iss="evil"), SECRET), {"issuer": "app"}),
        ("no iss", lambda: hs256(claims(), SECRET), {"issuer": "app"}),
        ("garbage", lambda: "not.a.token", {}),
        ("empty", lambda: "", {}),
        ("not a string", lambda: {"sub": "alice"}, {}),
        ("too long", lambda: hs256(claims(pad="x" * 9000), SECRET), {}),
        ("HS512", lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"), {}),
    ],
)
def test_refused(what, make_token, options):
    assert user(JWTAuthorizer(SECRET, **options), make_token()) is None, what


def test_the_key_fixes_the_algorithm_even_within_hmac():
    # The same secret, a stronger hash: still not the one algorithm allowed.
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert user(JWTAuthorizer(SECRET * 2), token) is None


def test_audience_and_issuer_when_they_match():
    authorizer = JWTAuthorizer(SECRET, audience="chat", issuer="app")
    token = hs256(claims(aud=["other", "chat"], iss="app"), SECRET)
    assert user(authorizer, token)["id"] == "alice"


def test_leeway_covers_nbf_and_iat_but_never_a_passed_exp():
    early = hs256(claims(nbf=claims(lifetime=5)["exp"], iat=claims(lifetime=5)["exp"]), SECRET)
    assert user(JWTAuthorizer(SECRET), early) is None
    assert user(JWTAuthorizer(SECRET, leeway=30), early)["id"] == "alice"


def test_an_hmac_token_is_refused_by_a_public_key_configuration():
    keys = rsa_pair()
    authorizer = JWTAuthorizer(keys.public_pem)
    # The classic confusion: an HS256 token "signed" with the public key's PEM.
    assert user(authorizer, hs256(claims(), keys.public_pem)) is None
    assert user(authorizer, hs256(claims(), keys.public_pem.strip())) is None
    assert user(authorizer, hs256(claims(), SECRET)) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_string_is_refused_without_an_exception(token):
    assert user(JWTAuthorizer(SECRET), token) is None


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text() | st.none(), max_size=5))
def test_any_claims_signed_with_the_key_pass_only_with_sub_and_a_future_exp(extra):
    payload = {**extra}
    result = user(JWTAuthorizer(SECRET), hs256(payload, SECRET))
    if result is not None:
        assert isinstance(result["sub"], str) and result["id"] == result["sub"]
        assert isinstance(result["exp"], int | float)


# -- key files -------------------------------------------------------------


def _private_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_gives_its_public_key():
    keys = rsa_pair()
    authorizer = JWTAuthorizer(_certificate(keys.private))
    assert user(authorizer, keys.sign(claims()))["id"] == "alice"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"short\n", "at least 32 bytes"),
        (b"", "at least 32 bytes"),
        (_private_pem(ec_pair().private), "private key"),
        (b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n", "PEM public key"),
        (
            ec.generate_private_key(ec.SECP256K1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "P-256",
        ),
        (
            rsa.generate_private_key(65537, 1024)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "2048 bits",
        ),
    ],
)
def test_unusable_key_files_say_why(tmp_path, content, message):
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        JWTAuthorizer.from_file(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_key_file_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the JWT key file .*No such file"):
        JWTAuthorizer.from_file(tmp_path / "nope")


def test_a_secret_file_may_end_with_a_newline(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert user(JWTAuthorizer.from_file(path), hs256(claims(), SECRET))["id"] == "alice"
    assert load_key(b"  " + SECRET + b"\r\n") == SECRET


def test_a_negative_leeway_is_refused():
    with pytest.raises(ValueError, match="leeway"):
        JWTAuthorizer(SECRET, leeway=-1)
