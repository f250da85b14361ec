"""A small OpenID Connect issuer for tests: real keys, a real HTTP server (discovery + JWKS), signed tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "territoire-data"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIdentityProvider:
    """Serves `<issuer>/.well-known/openid-configuration` and `<issuer>/certs` on a free port, in a thread.

    Keys are generated here; `rotate()` replaces the published keys, as an operator rotating Keycloak's keys.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        self.requests: list[str] = []
        # The authorization code flow (PKCE): who signs in at /auth, and the codes given out, one use each.
        self.user: dict[str, Any] = {"roles": ["territoire-publisher"], "preferred_username": "alice"}
        self.codes: dict[str, dict[str, str]] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/realms/test/.well-known/openid-configuration":
                    body = {
                        "issuer": provider.issuer,
                        "jwks_uri": f"{provider.issuer}/protocol/openid-connect/certs",
                        "authorization_endpoint": f"{provider.issuer}/protocol/openid-connect/auth",
                        "token_endpoint": f"{provider.issuer}/protocol/openid-connect/token",
                        "code_challenge_methods_supported": ["S256"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                elif path == "/realms/test/protocol/openid-connect/certs":
                    body = provider.jwks()
                elif path == "/realms/test/protocol/openid-connect/auth":
                    # The person signs in at once (no form): the provider sends them back with a code.
                    params = dict(urllib.parse.parse_qsl(query))
                    if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
                        self.send_error(400)
                        return
                    code = secrets.token_urlsafe(16)
                    provider.codes[code] = params
                    target = (
                        f"{params['redirect_uri']}?{urllib.parse.urlencode({'code': code, 'state': params['state']})}"
                    )
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                provider.requests.append(self.path)
                if self.path != "/realms/test/protocol/openid-connect/token":
                    self.send_error(404)
                    return
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                issued = provider.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "").encode()
                challenge = b64url(hashlib.sha256(verifier).digest())
                if (
                    issued is None
                    or form.get("grant_type") != "authorization_code"
                    or form.get("client_id") != issued["client_id"]
                    or form.get("redirect_uri") != issued["redirect_uri"]
                    or challenge != issued["code_challenge"]
                ):
                    status, body = 400, {"error": "invalid_grant"}
                else:
                    user = dict(provider.user)
                    roles = user.pop("roles")
                    status, body = 200, {"access_token": provider.token(roles, **user), "token_type": "Bearer"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.add_key("rsa-1")

    def start(self) -> TestIdentityProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_key(self, kid: str, kind: str = "RSA") -> None:
        key: Any = rsa.generate_private_key(65537, 2048) if kind == "RSA" else ec.generate_private_key(ec.SECP256R1())
        self.private[kid] = key
        self.published.append(kid)

    def rotate(self, kid: str) -> None:
        """Publish only a new key from now on (the old one is withdrawn)."""
        self.add_key(kid)
        self.published = [kid]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.private[kid]
            jwk = json.loads(
                (
                    jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
                ).to_jwk(key.public_key())
            )
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        return bytes(
            self.private[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def claims(self, roles: list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": str(uuid.uuid4()),
            "preferred_username": "alice",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "typ": "Bearer",
            "realm_access": {"roles": roles},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, roles: list[str], *, kid: str = "rsa-1", alg: str | None = None, **overrides: Any) -> str:
        key = self.private[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(self.claims(roles, **overrides), key, algorithm=alg, headers={"kid": kid})

    def unsigned(self, roles: list[str]) -> str:
        """An `alg: none` token: no signature at all."""
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(self.claims(roles)).encode())}."

    def hmac_with_public_key(self, roles: list[str], kid: str = "rsa-1") -> str:
        """The classic confusion attack: HS256 "signed" with the issuer's public key as the secret."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = b64url(json.dumps(self.claims(roles)).encode())
        signature = hmac.new(self.public_pem(kid), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"
