"""A distribution token server for tests: the ``realm`` a token-auth ``docker-registry`` names.

It does what Docker Hub's, Harbor's or GitLab's token service does for a pull: it checks basic
credentials, grants the requested ``pull`` scopes the user has, and answers with a JWT signed
RS256 by a self-signed certificate. ``docker-registry`` (distribution 2.8) trusts the token when
the JWS ``x5c`` header carries a chain to a certificate in its ``rootcertbundle``; here that
chain is the signing certificate itself. Distribution accepts a token up to 60 s after its
``exp`` (clock-skew leeway), so a test that wants tokens to die quickly gives a negative
``lifetime`` (``-58`` leaves about two seconds).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from certs import KeyPair, der, sign_rs256
from http_stub import QuietHandler, serving


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """The running service; ``issued`` lists every token handed out, in order."""

    realm: str
    service: str
    issuer: str
    signing: KeyPair
    users: Mapping[str, str]
    grants: Mapping[str, Collection[str]]
    lifetime: int
    issued: list[str] = field(default_factory=list)

    def registry_auth(self) -> dict:
        """The ``auth:`` section of a docker-registry config that trusts this service."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.signing.cert),
            }
        }

    def answer(self, authorization: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        """(status, JSON body) for a token request."""
        user = None
        if authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return 401, {"details": "incorrect username or password"}
            user = name
        allowed = self.grants.get(user, ()) if user else ()
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a == "pull" and name in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        token = self._sign(user or "", access)
        self.issued.append(token)
        return 200, {"token": token, "access_token": token, "expires_in": self.lifetime}

    def _sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der(self.signing.cert)).decode()]}
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.lifetime,
            "nbf": now - 1, "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }  # fmt: skip
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        return f"{signed}.{_b64url(sign_rs256(self.signing.key, signed.encode()))}"


@contextlib.contextmanager
def run_token_server(
    signing: KeyPair,
    users: Mapping[str, str],
    grants: Mapping[str, Collection[str]],
    lifetime: int = 300,
) -> Iterator[TokenServer]:
    """Serve ``/token`` on 127.0.0.1; ``grants`` maps a user to the repositories it may pull."""
    service: TokenServer

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            self.answer_json(*service.answer(self.headers.get("Authorization", ""), parse_qs(url.query)))

    with serving(Handler) as server:
        service = TokenServer(
            realm=f"http://127.0.0.1:{server.server_address[1]}/token",
            service="test-registry",
            issuer="test-token-issuer",
            signing=signing,
            users=users,
            grants=grants,
            lifetime=lifetime,
        )
        yield service
