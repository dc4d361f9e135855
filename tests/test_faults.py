"""Faults: storage that fails after committing, shutdown with requests in
flight, and TLS."""

from __future__ import annotations

import datetime
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionLost
from twisted.logger import globalLogPublisher

from chatserver import MemoryStorage
from chatserver.client import RequestFailed, connect
from chatserver.options import Options
from chatserver.tap import make_service
from tests.conftest import add_demo_users
from tests.processes import ServerProcess

# Storage calls the slow store has received, for a test to wait on, and the
# Deferred that lets them finish, for the test to fire when it chooses.
STARTED: list[Deferred] = []
RELEASE: list[Deferred] = []


class SlowStorage(MemoryStorage):
    """Stores a message only when the test lets it, like a loaded database."""

    def __init__(self) -> None:
        super().__init__()
        add_demo_users(self)

    def create(self, message):
        for waiting in STARTED:
            if not waiting.called:
                waiting.callback(message)
        release = RELEASE[-1] if RELEASE else Deferred()
        return release.addCallback(lambda _: MemoryStorage.create(self, message))


class CommitsThenFails(MemoryStorage):
    """Stores the message, then loses the connection before answering,
    once per clientMessageId: the case a client retry must survive."""

    failed: set = set()

    def create(self, message):
        stored = MemoryStorage.create(self, message)
        key = message.get("clientMessageId")
        if key not in self.failed:
            self.failed.add(key)
            return fail(ConnectionLost("database went away"))
        return stored


@pytest_twisted.ensureDeferred
async def test_a_retry_after_a_failed_ack_stores_the_message_once(serve, make_server):
    storage = add_demo_users(CommitsThenFails())
    server = await serve(make_server(storage))
    alice = await server.login("alice")
    bob = await server.login("bob")
    message = {"to": "bob", "text": "exactly once", "clientMessageId": "m-1"}
    with pytest.raises(RequestFailed) as info:
        await alice.send(message)
    assert info.value.code == "storageError"
    assert bob.pending_pushes("chatMessage") == []  # no ack, no push
    stored = await alice.send(message)
    assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
    history = await bob.get_messages(**{"with": "alice"})
    assert [m["_id"] for m in history] == [stored["_id"]]


@pytest_twisted.ensureDeferred
async def test_shutdown_acknowledges_requests_in_flight_then_says_going_away():
    options = Options()
    options.parseOptions(
        ["--storage", "tests.test_faults:SlowStorage", "--endpoint", "tcp:0:interface=127.0.0.1"]
    )
    service = make_service(options)
    service.startService()
    listener = list(service)[-1]
    port = await listener.whenListening()
    try:
        alice = await connect(f"ws://127.0.0.1:{port.getHost().port}")
        await alice.authorize(token="alice-token")
        STARTED.append(Deferred())
        RELEASE.append(Deferred())
        ack = alice.send({"to": "bob", "text": "in flight"})
        await STARTED[-1]
        draining: Deferred = Deferred()

        def watch(event: dict) -> None:
            if event.get("log_format") == "waiting for {n} requests" and not draining.called:
                draining.callback(None)

        globalLogPublisher.addObserver(watch)
        try:
            stopped = service.stopService()
            await draining  # the server waits for the request in flight...
        finally:
            globalLogPublisher.removeObserver(watch)
        RELEASE[-1].callback(None)  # ...and the database answers meanwhile
        stored = await ack  # acknowledged: it was stored before the server let go
        assert stored["text"] == "in flight"
        assert await alice.closed == (1001, "server shutting down")
        await stopped
        history = await service.storage.getMessages({"ids": ["bob", "alice"]})
        assert [m["_id"] for m in history] == [stored["_id"]]
    finally:
        STARTED.clear()
        RELEASE.clear()
        if service.running:
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_clients_with_1001(tmp_path):
    server = ServerProcess.twistd("--dev-auth", cwd=tmp_path)
    try:
        client = await connect(server.url)
        await client.authorize(name="alice")
        server.process.send_signal(signal.SIGTERM)
        assert await client.closed == (1001, "server shutting down")
    finally:
        code = server.stop()
    assert code in (0, -signal.SIGTERM)


def self_signed_certificate(path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (path / "cert.pem").write_bytes(cert_pem)
    (path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_pem


@pytest_twisted.ensureDeferred
async def test_wss_with_the_ssl_endpoint(tmp_path, make_server):
    cert_pem = self_signed_certificate(tmp_path)
    description = (
        f"ssl:0:interface=127.0.0.1:privateKey={tmp_path / 'key.pem'}"
        f":certKey={tmp_path / 'cert.pem'}"
    )
    app = make_server()
    port = await serverFromString(reactor, description).listen(app.site)
    url = f"wss://localhost:{port.getHost().port}"
    trust = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(cert_pem))
    clients = []
    try:
        for token in ("alice-token", "bob-token"):
            client = await connect(url, tls=trust)
            clients.append(client)
            await client.authorize(token=token)
        alice, bob = clients
        stored = await alice.send({"to": "bob", "text": "encrypted"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        assert alice.transport.getHandle().get_cipher_name()  # really TLS
        # The TLS layer hands its bytes straight to each WebSocket protocol.
        assert all(c.transport.wrappedProtocol is c for c in app.factory.connections)
    finally:
        for client in clients:
            client.sendClose()
            await client.closed
        await port.stopListening()
