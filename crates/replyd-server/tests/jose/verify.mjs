// Verifies a replyd webhook delivery's `webhook-jwt` header as a Node
// receiver would: jose fetches replyd's JWKS, checks the token's
// signature, exp, aud and iss, and the token's body_sha256 must be the
// digest of the body received.
//
// Reads {"jwks_url", "token", "body", "audience", "issuer"} as JSON on
// stdin. Exit 0 and prints the claims when the delivery verifies; exit 1
// and prints why when it does not; exit 3 when jose is missing.

import { createHash } from "node:crypto";

let jose;
try {
  jose = await import("jose");
} catch {
  process.exit(3);
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const d = JSON.parse(input);
try {
  const jwks = jose.createRemoteJWKSet(new URL(d.jwks_url));
  const { payload } = await jose.jwtVerify(d.token, jwks, {
    algorithms: ["ES256"],
    audience: d.audience,
    issuer: d.issuer,
    requiredClaims: ["iat", "exp", "jti", "sub", "body_sha256"],
  });
  const digest = createHash("sha256").update(d.body).digest("hex");
  if (payload.body_sha256 !== digest) {
    console.log("BodyDigestMismatch");
    process.exit(1);
  }
  console.log(JSON.stringify(payload));
} catch (e) {
  console.log(e.code ?? e.name, e.message);
  process.exit(1);
}
