"""Sign-in with JWTs over real sockets: what authorizes, what is refused with
``authorizationFailed``, sessions closed at ``exp`` (4001 "token expired") and
renewed by a fresh token; the plugin's ``--jwt-key``."""

from __future__ import annotations

import subprocess
import time

import pytest
import pytest_twisted

from chatserver import AuthorizerOverride, CombinedStorage, MemoryStorage
from chatserver.client import RequestFailed, connect
from chatserver.protocol import CLOSE_TOKEN_EXPIRED
from chatserver.storage.jwtauth import JWTAuthorizer
from tests.conftest import demo_storage
from tests.jwtkeys import claims, ed25519_pair, hs256, new_secret, rsa_pair, unsigned
from tests.processes import ROOT, TWISTD, ServerProcess, make_group

SECRET = new_secret()


def jwt_server(make_server, key=SECRET, **options):
    storage = AuthorizerOverride(demo_storage(), JWTAuthorizer(key, **options))
    return make_server(storage)


async def close(*clients):
    for client in clients:
        if client.close_info is None:
            client.sendClose()
            await client.closed


@pytest_twisted.ensureDeferred
async def test_a_token_signed_with_the_key_authorizes_and_the_store_keeps_the_chat(
    serve, make_server
):
    server = await serve(jwt_server(make_server))
    alice, bob = await server.connect(), await server.connect()
    token_claims = claims("alice", name="Alice", plan="pro")
    user = await alice.authorize(token=hs256(token_claims, SECRET))
    assert user == {**token_claims, "id": "alice"}
    await bob.authorize(token=hs256(claims("bob"), SECRET))
    stored = await alice.send({"to": "team", "isGroup": True, "text": "hi"})
    assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
    assert stored["from"] == "alice"
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_combined_with_any_message_store(serve, make_server):
    store = MemoryStorage()
    store.add_group("pair", ["alice", "bob"])
    combined = CombinedStorage(authorizer=JWTAuthorizer(SECRET), messages=store, groups=store)
    server = await serve(make_server(combined))
    alice, bob = await server.connect(), await server.connect()
    await alice.authorize(token=hs256(claims("alice"), SECRET))
    await bob.authorize(token=hs256(claims("bob"), SECRET))
    stored = await bob.send({"to": "pair", "isGroup": True, "text": "combined"})
    assert (await alice.next_push("chatMessage"))["_id"] == stored["_id"]
    await close(alice, bob)


REFUSED = {
    "wrong signature": lambda: hs256(claims(), new_secret()),
    "alg none": lambda: unsigned(claims()),
    "HMAC token, public-key configuration": lambda: hs256(claims(), rsa_pair().public_pem),
    "no exp": lambda: hs256({"sub": "alice"}, SECRET),
    "exp passed": lambda: hs256(claims(lifetime=-5), SECRET),
    "wrong audience": lambda: hs256(claims(aud="other", iss="app"), SECRET),
    "wrong issuer": lambda: hs256(claims(aud="chat", iss="evil"), SECRET),
    "no token": lambda: None,
}


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused_with_authorization_failed(serve, make_server):
    rsa_server = await serve(jwt_server(make_server, rsa_pair().public_pem))
    hmac_server = await serve(jwt_server(make_server, audience="chat", issuer="app"))
    for what, make_token in REFUSED.items():
        server = rsa_server if "public-key" in what else hmac_server
        client = await server.connect()
        with pytest.raises(RequestFailed) as caught:
            await client.authorize(token=make_token())
        assert caught.value.code == "authorizationFailed", what
        # The connection stays open for a correct token.
        if server is rsa_server:
            token = rsa_pair().sign(claims())
        else:
            token = hs256(claims(aud="chat", iss="app"), SECRET)
        assert (await client.authorize(token=token))["id"] == "alice", what
        await close(client)


@pytest_twisted.ensureDeferred
async def test_a_session_is_closed_when_its_token_expires(serve, make_server):
    server = await serve(jwt_server(make_server))
    client = await server.connect()
    expiry = time.time() + 1.0
    await client.authorize(token=hs256(claims(exp=expiry), SECRET))
    code, reason = await client.closed
    assert (code, reason) == (CLOSE_TOKEN_EXPIRED, "token expired")
    assert time.time() >= expiry


@pytest_twisted.ensureDeferred
async def test_a_fresh_token_extends_the_session(serve, make_server):
    server = await serve(jwt_server(make_server))
    client = await server.connect()
    first = time.time() + 1.0
    await client.authorize(token=hs256(claims(exp=first), SECRET))
    renewed = first + 1.5
    await client.authorize(token=hs256(claims(exp=renewed), SECRET))
    code, reason = await client.closed
    # Closed once, at the renewed token's exp: still open past the first.
    assert (code, reason) == (CLOSE_TOKEN_EXPIRED, "token expired")
    assert time.time() >= renewed


# -- the plugin ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_plugin_signs_in_with_jwts_and_keeps_the_stores_groups(tmp_path):
    db = tmp_path / "chat.sqlite3"
    make_group(f"sqlite:{db}", "team", "alice", "bob", cwd=tmp_path)
    keys = ed25519_pair()
    server = ServerProcess.twistd(
        "--storage",
        f"sqlite:{db}",
        "--jwt-key",
        str(keys.write(tmp_path)),
        "--jwt-audience",
        "chat",
        cwd=tmp_path,
    )
    try:
        alice, bob = await connect(server.url), await connect(server.url)
        await alice.authorize(token=keys.sign(claims("alice", aud="chat")))
        await bob.authorize(token=keys.sign(claims("bob", aud="chat")))
        stored = await alice.send({"to": "team", "isGroup": True, "text": "signed in by JWT"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        with pytest.raises(RequestFailed, match="authorizationFailed"):
            await (await connect(server.url)).authorize(token=keys.sign(claims("eve")))
        await close(alice, bob)
    finally:
        server.stop()
    assert b"JWTs checked with <JWTAuthorizer EdDSA>" in server.log


@pytest.mark.parametrize(
    ("setup", "options", "message"),
    [
        (None, ["--jwt-key", "missing.key"], "--jwt-key: cannot read the JWT key file"),
        ("short", ["--jwt-key", "key"], "must be at least 32 bytes"),
        ("private", ["--jwt-key", "key"], "holds a private key"),
        ("secret", ["--jwt-key", "key", "--dev-auth"], "choose one"),
        (None, ["--jwt-audience", "chat"], "--jwt-audience needs --jwt-key"),
        (None, ["--api-key-file", "missing"], "--api-key-file: cannot read the API key file"),
        ("short", ["--api-key-file", "key"], "must be at least 32 characters"),
    ],
)
def test_key_file_mistakes_stop_start_up_with_one_line(tmp_path, setup, options, message):
    from cryptography.hazmat.primitives import serialization

    if setup == "short":
        (tmp_path / "key").write_text("tooshort\n")
    elif setup == "secret":
        (tmp_path / "key").write_bytes(SECRET)
    elif setup == "private":
        (tmp_path / "key").write_bytes(
            rsa_pair().private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    result = subprocess.run(
        [str(TWISTD), "--nodaemon", "--pidfile=", "chatserver", "--storage", "memory", *options],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert message in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if message in line]) == 1


@pytest_twisted.ensureDeferred
async def test_jwt_is_off_by_default(serve, make_server):
    server = await serve(make_server())
    client = await server.connect()
    with pytest.raises(RequestFailed, match="authorizationFailed"):
        await client.authorize(token=hs256(claims(), SECRET))
    assert (await client.authorize(token="alice-token"))["id"] == "alice"
    await close(client)
