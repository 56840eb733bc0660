"""The ``webhook-jwt`` check (needs ``PyJWT[crypto]``: ``pip install replyd[jwt]``).

The token is a compact JWS, ES256, with the signing key's ``kid``; its
claims bind it to one message (see the server's
``crates/replyd-server/src/webhooks/jwt.rs``): ``iss`` (the server's
issuer), ``aud`` (the endpoint URL), ``iat``, ``exp`` (``iat`` + 5 min),
``jti`` (the ``webhook-id``), ``sub`` (the job id), ``tenant`` (the
job's) and ``body_sha256`` (lowercase hex SHA-256 of the exact body).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

from ._webhooks import REQUIRED_CLAIMS, WebhookVerificationError

if TYPE_CHECKING:
    from ._webhooks import JwksClient

try:
    import jwt
except ImportError:  # pragma: no cover - exercised where PyJWT is absent
    jwt = None  # type: ignore[assignment]


def _signing_key(token: str, jwks: Union[Mapping[str, Any], "JwksClient"]) -> Any:
    assert jwt is not None
    header = jwt.get_unverified_header(token)
    if header.get("alg") != "ES256":
        raise WebhookVerificationError(f"webhook-jwt: algorithm {header.get('alg')!r}, not ES256")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise WebhookVerificationError("webhook-jwt: no kid")
    for refresh in (False, True):
        if isinstance(jwks, Mapping):
            if refresh:
                break
            key_set = dict(jwks)
        else:
            key_set = jwks.key_set(refresh=refresh)
        for key in key_set.get("keys", []):
            if isinstance(key, dict) and key.get("kid") == kid:
                return jwt.PyJWK.from_dict(key, algorithm="ES256").key
    raise WebhookVerificationError(f"webhook-jwt: no key {kid!r} in the JWKS")


def verify_jwt(
    token: str,
    jwks: Union[Mapping[str, Any], "JwksClient"],
    *,
    body: bytes,
    msg_id: str,
    job_id: Optional[str],
    issuer: Optional[str],
    audience: Optional[str],
    tenant: Optional[str],
    leeway: float,
) -> Dict[str, Any]:
    """The token's claims, once it is verified for this delivery."""
    if jwt is None:
        raise ImportError("verifying webhook-jwt needs PyJWT: pip install 'replyd[jwt]'")
    if issuer is None and not isinstance(jwks, Mapping):
        issuer = jwks.issuer
    try:
        claims: Dict[str, Any] = jwt.decode(
            token,
            _signing_key(token, jwks),
            algorithms=["ES256"],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": REQUIRED_CLAIMS, "verify_aud": audience is not None},
        )
    except jwt.PyJWTError as e:
        raise WebhookVerificationError(f"webhook-jwt: {type(e).__name__}: {e}") from e
    digest = hashlib.sha256(body).hexdigest()
    if not hmac.compare_digest(str(claims.get("body_sha256", "")), digest):
        raise WebhookVerificationError("webhook-jwt: body_sha256 is not the body's digest")
    if claims.get("jti") != msg_id:
        raise WebhookVerificationError("webhook-jwt: jti is not the webhook-id")
    if job_id is not None and claims.get("sub") != job_id:
        raise WebhookVerificationError("webhook-jwt: sub is not the job's id")
    if tenant is not None and claims.get("tenant") != tenant:
        raise WebhookVerificationError(f"webhook-jwt: the token is another tenant's, not {tenant!r}")
    return claims
