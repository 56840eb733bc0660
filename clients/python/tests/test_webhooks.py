"""verify_webhook: against deliveries signed by the official Standard
Webhooks library, and against real deliveries from replyd (with their
``webhook-jwt`` checked against the server's JWKS)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone
from typing import Dict, Iterator

import jwt
import pytest
from standardwebhooks.webhooks import Webhook

import replyd
from conftest import MakeServer
from support import ReplydServer, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, ok!!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret, also 32 bytes!!!").decode()
BODY = json.dumps(
    {"type": "job.succeeded", "timestamp": "2026-12-07T05:00:00.000Z",
     "data": {"id": "j1", "state": "succeeded", "result": {"pages": 10}}}
).encode()


def _signed(body: bytes = BODY, secret: str = SECRET, at: float | None = None, msg_id: str = "msg_1") -> Dict[str, str]:
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }


def test_a_delivery_signed_by_the_official_library_verifies() -> None:
    event = replyd.verify_webhook(BODY, _signed(), SECRET)
    assert (event.id, event.type) == ("msg_1", "job.succeeded")
    assert event.data["state"] == "succeeded" and event.result == {"pages": 10}
    # The raw key works too, and header names are case-insensitive.
    raw = base64.b64decode(SECRET[len("whsec_"):])
    upper = {k.upper(): v for k, v in _signed().items()}
    assert replyd.verify_webhook(BODY.decode(), list(upper.items()), raw).type == "job.succeeded"


def test_a_tampered_body_is_refused() -> None:
    headers = _signed()
    tampered = BODY.replace(b"succeeded", b"failed", 1)
    with pytest.raises(replyd.WebhookVerificationError, match="signature"):
        replyd.verify_webhook(tampered, headers, SECRET)


def test_the_wrong_secret_is_refused() -> None:
    with pytest.raises(replyd.WebhookVerificationError):
        replyd.verify_webhook(BODY, _signed(), OTHER_SECRET)


def test_old_and_future_timestamps_are_refused() -> None:
    with pytest.raises(replyd.WebhookVerificationError, match="too old"):
        replyd.verify_webhook(BODY, _signed(at=time.time() - 301), SECRET)
    with pytest.raises(replyd.WebhookVerificationError, match="future"):
        replyd.verify_webhook(BODY, _signed(at=time.time() + 301), SECRET)
    # Within the five minutes either way is fine.
    replyd.verify_webhook(BODY, _signed(at=time.time() - 240), SECRET)
    # A timestamp that does not match the signed one is refused too.
    headers = _signed()
    headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    with pytest.raises(replyd.WebhookVerificationError):
        replyd.verify_webhook(BODY, headers, SECRET)


def test_rotation_several_signatures_and_secrets() -> None:
    headers = _signed()
    other = _signed(secret=OTHER_SECRET)
    headers["webhook-signature"] = f"v1a,AAAA {other['webhook-signature']} {headers['webhook-signature']}"
    assert replyd.verify_webhook(BODY, headers, SECRET).id == "msg_1"
    assert replyd.verify_webhook(BODY, _signed(secret=OTHER_SECRET), [SECRET, OTHER_SECRET]).id == "msg_1"


def test_missing_headers_are_refused() -> None:
    headers = _signed()
    del headers["webhook-signature"]
    with pytest.raises(replyd.WebhookVerificationError, match="missing"):
        replyd.verify_webhook(BODY, headers, SECRET)


WEBHOOK_CONFIG = f"""
[queues.work]

[queues.demo]
executor = "demo"

[webhooks]
secret = "{SECRET}"
allow_networks = ["127.0.0.0/8"]
retry_schedule = [0, 1]
# Without it the issuer is the server's own URL (the address it listens on).
jwt_issuer = "https://replyd.test"
"""


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.close()


@pytest.fixture
def hook_server(make_server: MakeServer) -> ReplydServer:
    return make_server(WEBHOOK_CONFIG)


def test_a_real_delivery_from_replyd_verifies(hook_server: ReplydServer, receiver: WebhookReceiver) -> None:
    with replyd.Client(hook_server.url) as client:
        job = client.submit("demo", {"seconds": 0}, webhook={"url": receiver.url, "jwt": True})
        headers, body = receiver.next()
        jwks = replyd.JwksClient(hook_server.url)
        event = replyd.verify_webhook(
            body, headers, SECRET, jwks=jwks, issuer="https://replyd.test",
            audience=receiver.url, tenant="default", require_jwt=True,
        )
        # The official library agrees.
        Webhook(SECRET).verify(body, headers)
    assert event.type == "job.succeeded"
    assert event.job is not None and event.job.id == job.id and event.job.state == "succeeded"
    assert event.result == {"input": {"seconds": 0}, "slept": 0.0}
    assert event.jwt_claims is not None
    assert event.jwt_claims["sub"] == job.id and event.jwt_claims["jti"] == headers["webhook-id"]
    assert event.jwt_claims["iss"] == "https://replyd.test"

    with pytest.raises(replyd.WebhookVerificationError, match="signature"):
        replyd.verify_webhook(body + b" ", headers, SECRET, jwks=jwks)
    with pytest.raises(replyd.WebhookVerificationError, match="InvalidAudience"):
        replyd.verify_webhook(
            body, headers, SECRET, jwks=jwks, issuer="https://replyd.test",
            audience="https://elsewhere.example/hook",
        )
    with pytest.raises(replyd.WebhookVerificationError, match="InvalidIssuer"):
        replyd.verify_webhook(body, headers, SECRET, jwks=jwks, issuer="https://someone.else")
    # Given the server's URL, the issuer expected by default is that URL.
    with pytest.raises(replyd.WebhookVerificationError, match="InvalidIssuer"):
        replyd.verify_webhook(body, headers, SECRET, jwks=jwks)
    with pytest.raises(replyd.WebhookVerificationError, match="tenant"):
        replyd.verify_webhook(
            body, headers, SECRET, jwks=jwks, issuer="https://replyd.test", tenant="acme"
        )


def test_without_an_issuer_set_it_is_the_servers_own_url(
    make_server: MakeServer, receiver: WebhookReceiver
) -> None:
    """`--listen 127.0.0.1:0`: the issuer is the address replyd bound, which a
    receiver can reach (not the configured port 0)."""
    server = make_server(WEBHOOK_CONFIG.replace('jwt_issuer = "https://replyd.test"\n', ""))
    with replyd.Client(server.url) as client:
        client.submit("demo", {"seconds": 0}, webhook={"url": receiver.url, "jwt": True})
        headers, body = receiver.next()
        event = replyd.verify_webhook(
            body, headers, SECRET, jwks=replyd.JwksClient(server.url),
            audience=receiver.url, require_jwt=True,
        )
    assert event.jwt_claims is not None and event.jwt_claims["iss"] == server.url


def test_a_jwt_for_another_body_is_refused(hook_server: ReplydServer, receiver: WebhookReceiver) -> None:
    """The HMAC of a forged body under a leaked secret verifies; the token,
    bound to the real body's digest, does not."""
    with replyd.Client(hook_server.url) as client:
        client.submit("demo", {"seconds": 0}, webhook={"url": receiver.url, "jwt": True})
        headers, body = receiver.next()
        keys = client.jwks()
    assert keys["keys"] and keys["keys"][0]["alg"] == "ES256"
    forged = body.replace(b'"slept"', b'"stolen"')
    forged_headers = dict(headers)
    forged_headers.update(_signed(forged, msg_id=headers["webhook-id"]))
    assert replyd.verify_webhook(forged, forged_headers, SECRET).type == "job.succeeded"
    with pytest.raises(replyd.WebhookVerificationError, match="body_sha256"):
        replyd.verify_webhook(forged, forged_headers, SECRET, jwks=keys)
    # A token whose signature was altered does not verify either.
    head, claims, signature = headers["webhook-jwt"].split(".")
    bad = dict(headers, **{"webhook-jwt": f"{head}.{claims}.{signature[::-1]}"})
    with pytest.raises(replyd.WebhookVerificationError, match="webhook-jwt"):
        replyd.verify_webhook(body, bad, SECRET, jwks=keys)
    # And a token signed by a key that is not the server's names an unknown kid.
    from cryptography.hazmat.primitives.asymmetric import ec

    mine = ec.generate_private_key(ec.SECP256R1())
    claims_json = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    fake = jwt.encode(claims_json, mine, algorithm="ES256", headers={"kid": "not-theirs"})
    with pytest.raises(replyd.WebhookVerificationError, match="no key"):
        replyd.verify_webhook(body, dict(headers, **{"webhook-jwt": fake}), SECRET, jwks=keys)


def test_a_delivery_without_jwt_when_one_is_required(hook_server: ReplydServer, receiver: WebhookReceiver) -> None:
    with replyd.Client(hook_server.url) as client:
        client.submit("demo", {"seconds": 0}, webhook=receiver.url)
        headers, body = receiver.next()
    assert "webhook-jwt" not in headers
    assert replyd.verify_webhook(body, headers, SECRET).type == "job.succeeded"
    with pytest.raises(replyd.WebhookVerificationError, match="no webhook-jwt"):
        replyd.verify_webhook(body, headers, SECRET, jwks=hook_server.url, require_jwt=True)
