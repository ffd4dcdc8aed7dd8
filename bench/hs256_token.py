"""An HS256 access token for benchmarks: python3 bench/hs256_token.py SECRET ISSUER"""
import base64, hashlib, hmac, json, sys, time, uuid

secret, issuer = sys.argv[1].encode(), sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
header = {"alg": "HS256", "typ": "at+jwt"}
claims = {"iss": issuer, "aud": "signpost", "sub": str(uuid.uuid4()), "tid": str(uuid.uuid4()),
          "role": "member", "sid": str(uuid.uuid4()), "scope": "", "exp": now + 900, "iat": now, "jti": str(uuid.uuid4())}
signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
print(signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest()))
