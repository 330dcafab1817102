#!/usr/bin/env bash
# Mints a demo JWT (HS256) signed with examples/demo/jwt-secret, the key the
# demo's gateway.toml trusts. Usage:
#   scripts/demo-token.sh [SUBJECT] [SCOPES] [TTL_SECONDS]
#   curl -H "authorization: Bearer $(scripts/demo-token.sh alice 'cart:read')" ...
# For the demo only: real deployments verify tokens from an identity provider,
# with its public keys (RS256/ES256, `jwks_var`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "${1:-alice}" "${2:-cart:read}" "${3:-3600}" <<'PY'
import base64, hashlib, hmac, json, sys, time
sub, scope, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
secret = open("examples/demo/jwt-secret", "rb").read().rstrip(b"\r\n")
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
now = int(time.time())
header = {"alg": "HS256", "typ": "JWT", "kid": "demo"}
claims = {"iss": "https://login.shop.example", "aud": "shop-api", "sub": sub,
          "scope": scope, "iat": now, "exp": now + ttl}
signing = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
sig = b64(hmac.new(secret, signing, hashlib.sha256).digest())
print((signing + b"." + sig).decode())
PY
