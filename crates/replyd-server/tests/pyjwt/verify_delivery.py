"""Verifies a replyd webhook delivery's `webhook-jwt` header as a receiver
would: PyJWT's PyJWKClient fetches replyd's JWKS, the token's signature,
`exp`, `aud` and `iss` are checked by jwt.decode, and the token's
`body_sha256` must be the digest of the body received.

Reads {"jwks_url", "token", "body", "audience", "issuer"} as JSON on stdin.
Exit 0 and prints the claims when the delivery verifies; exit 1 and prints
why when it does not; exit 3 when PyJWT (or its crypto backend) is missing.
"""

import hashlib
import json
import os
import sys

# The JWKS is on loopback: never through a proxy from the environment.
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "*"

try:
    import jwt
    from jwt import PyJWKClient
    import cryptography  # noqa: F401  (ES256 needs it)
except ImportError:
    sys.exit(3)

d = json.load(sys.stdin)
try:
    key = PyJWKClient(d["jwks_url"]).get_signing_key_from_jwt(d["token"])
    claims = jwt.decode(
        d["token"],
        key.key,
        algorithms=["ES256"],
        audience=d["audience"],
        issuer=d["issuer"],
        options={"require": ["iss", "aud", "iat", "exp", "jti", "sub", "body_sha256"]},
    )
    digest = hashlib.sha256(d["body"].encode()).hexdigest()
    if claims["body_sha256"] != digest:
        print("BodyDigestMismatch")
        sys.exit(1)
except jwt.PyJWTError as e:
    print(type(e).__name__, e)
    sys.exit(1)
print(json.dumps(claims))
