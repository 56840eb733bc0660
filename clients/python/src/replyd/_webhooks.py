"""Verifying replyd's webhook deliveries (API.md §2).

Every delivery is signed per Standard Webhooks: ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``
of ``id.timestamp.body`` under the ``whsec_`` secret; during a secret
rotation several signatures, space-separated). A delivery may also carry
``webhook-jwt``: an ES256 token over the body's digest whose keys are at
the server's ``/.well-known/jwks.json``; it is checked when a key set is
given (``pip install replyd[jwt]``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import httpx

from ._errors import ReplydError
from ._models import Job
from ._routes import path

#: How far a delivery's timestamp may be from now (Standard Webhooks: 5 min).
DEFAULT_TOLERANCE = 300.0
#: Seconds of clock skew allowed when checking a JWT's ``iat`` and ``exp``.
DEFAULT_JWT_LEEWAY = 30.0
#: The claims every replyd webhook JWT carries.
REQUIRED_CLAIMS = ["iss", "aud", "iat", "exp", "jti", "sub", "body_sha256"]

Secret = Union[str, bytes]
Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


class WebhookVerificationError(ReplydError):
    """A delivery that must not be trusted: a signature or token that does
    not verify, a timestamp outside the tolerance, a missing header."""


@dataclass(frozen=True)
class WebhookEvent:
    """A verified delivery: ``{"type", "timestamp", "data"}`` and its id."""

    id: str
    """The ``webhook-id``: the same on every retry of one delivery, so a
    receiver drops one it has seen."""
    type: str
    """``job.succeeded``, ``job.failed``, ``job.canceled``, ``job.progress``…
    (or an operational event's type)."""
    timestamp: str
    """When the event happened (RFC 3339)."""
    data: Dict[str, Any]
    """The event's data: for job events the job's representation, with
    ``result`` inline when it is JSON and small."""
    payload: Dict[str, Any]
    """The whole decoded body."""
    jwt_claims: Optional[Dict[str, Any]] = None
    """The ``webhook-jwt`` token's claims, when it was verified."""

    @property
    def job(self) -> Optional[Job]:
        """The job, for ``job.*`` events (None for others)."""
        if not self.type.startswith("job.") or "id" not in self.data:
            return None
        return Job.from_json({k: v for k, v in self.data.items() if k != "result"})

    @property
    def result(self) -> Any:
        """The job's result when the delivery carries it inline (else None)."""
        return self.data.get("result")


class JwksClient:
    """Fetches a replyd's webhook JWT keys and keeps them for their
    ``Cache-Control: max-age`` (5 minutes by default), fetching again
    early when a token names a key it does not have (a rotation).

    ``url`` is the key set's URL (``…/.well-known/jwks.json``) or the
    server's base URL, which is then also the tokens' expected issuer
    (``issuer``) unless the server sets ``webhooks.jwt_issuer`` or
    ``public_url`` otherwise.
    """

    #: The shortest time between two fetches for an unknown key.
    MIN_REFRESH = 10.0

    def __init__(
        self, url: str, *, timeout: float = 10.0, http_client: Optional[httpx.Client] = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"invalid JWKS URL {url!r}")
        if parts.path.endswith(".json"):
            self.url = url
            self.issuer: Optional[str] = None
        else:
            base = url.rstrip("/")
            self.url = base + path("jwks")
            self.issuer = base
        self._timeout = timeout
        self._http = http_client
        self._keys: Optional[Dict[str, Any]] = None
        self._expires = 0.0
        self._fetched = 0.0

    def key_set(self, *, refresh: bool = False) -> Dict[str, Any]:
        """The key set (``{"keys": [...]}``), fetched when stale or asked to."""
        now = time.monotonic()
        stale = self._keys is None or now >= self._expires
        if refresh and now - self._fetched >= self.MIN_REFRESH:
            stale = True
        if stale:
            self._fetch(now)
        assert self._keys is not None
        return self._keys

    def _fetch(self, now: float) -> None:
        try:
            if self._http is not None:
                response = self._http.get(self.url, timeout=self._timeout)
            else:
                response = httpx.get(self.url, timeout=self._timeout, follow_redirects=False)
        except httpx.HTTPError as e:
            raise WebhookVerificationError(f"could not fetch the JWKS at {self.url}: {e!r}") from e
        if response.status_code != 200:
            raise WebhookVerificationError(
                f"the JWKS at {self.url} answered {response.status_code}"
            )
        try:
            keys = response.json()
        except ValueError as e:
            raise WebhookVerificationError(f"the JWKS at {self.url} is not JSON") from e
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise WebhookVerificationError(f"the JWKS at {self.url} has no keys")
        max_age = 300.0
        for directive in response.headers.get("cache-control", "").split(","):
            name, _, value = directive.strip().partition("=")
            if name.lower() == "max-age" and value.isdigit():
                max_age = float(value)
        self._keys = keys
        self._fetched = now
        self._expires = now + max_age


def _header_map(headers: Headers) -> Dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: Dict[str, str] = {}
    for name, value in items:
        found.setdefault(name.lower(), value)
    return found


def _secret_bytes(secret: Secret) -> bytes:
    if isinstance(secret, bytes):
        return secret
    text = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("a webhook secret is whsec_ followed by base64") from e


def verify_webhook(
    payload: Union[bytes, str],
    headers: Headers,
    secret: Union[Secret, Sequence[Secret]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: Optional[float] = None,
    jwks: Union[None, str, Mapping[str, Any], JwksClient] = None,
    issuer: Optional[str] = None,
    audience: Optional[str] = None,
    tenant: Optional[str] = None,
    require_jwt: bool = False,
    jwt_leeway: float = DEFAULT_JWT_LEEWAY,
) -> WebhookEvent:
    """Verifies one delivery and returns its event.

    ``payload`` is the raw body, exactly as received (before any JSON
    parsing); ``headers`` the request's headers (any mapping or list of
    pairs; names are matched case-insensitively); ``secret`` the
    ``whsec_…`` secret (or its raw bytes), or several during a rotation.
    The signature must match, in constant time, and the timestamp be
    within ``tolerance`` seconds of ``now`` (default: the clock).

    When ``jwks`` is given (a key set, its URL, a replyd's base URL, or a
    :class:`JwksClient`, which caches) and the delivery has a
    ``webhook-jwt`` (required with ``require_jwt``), the token is verified
    too: ES256 by a key of the set, not expired, ``jti`` = ``webhook-id``,
    ``body_sha256`` = the body's digest, ``sub`` = the job's id, and
    ``iss``, ``aud`` (your endpoint's URL, as the job named it) and
    ``tenant`` when given (``iss`` defaults to the server's URL when
    ``jwks`` is one). Raises :class:`WebhookVerificationError`.
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    found = _header_map(headers)
    msg_id = found.get("webhook-id")
    stamp = found.get("webhook-timestamp")
    signatures = found.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        sent_at = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not a number") from None
    current = time.time() if now is None else now
    if sent_at < current - tolerance:
        raise WebhookVerificationError("the delivery's timestamp is too old")
    if sent_at > current + tolerance:
        raise WebhookVerificationError("the delivery's timestamp is too far in the future")
    secrets = [secret] if isinstance(secret, (str, bytes)) else list(secret)
    signed = f"{msg_id}.{sent_at}.".encode() + body
    expected = [
        base64.b64encode(hmac.new(_secret_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    ]
    matched = False
    for entry in signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version != "v1":
            continue
        for candidate in expected:
            matched = hmac.compare_digest(candidate, signature) or matched
    if not matched:
        raise WebhookVerificationError("no webhook-signature matches the secret")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the delivery's body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise WebhookVerificationError("the delivery's body is not an event")
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    claims: Optional[Dict[str, Any]] = None
    token = found.get("webhook-jwt")
    if require_jwt and (token is None or jwks is None):
        raise WebhookVerificationError("the delivery has no webhook-jwt, or no JWKS was given")
    if token is not None and jwks is not None:
        from ._webhook_jwt import verify_jwt

        claims = verify_jwt(
            token,
            jwks if not isinstance(jwks, str) else JwksClient(jwks),
            body=body,
            msg_id=msg_id,
            job_id=data.get("id") if event["type"].startswith("job.") else None,
            issuer=issuer,
            audience=audience,
            tenant=tenant,
            leeway=jwt_leeway,
        )
    return WebhookEvent(
        id=msg_id,
        type=event["type"],
        timestamp=str(event.get("timestamp", "")),
        data=data,
        payload=event,
        jwt_claims=claims,
    )
