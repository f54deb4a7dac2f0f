"""Safe by default: who may open the dashboard (a token, as a bearer token or the password of
HTTP basic auth), where it may listen (loopback unless a token is set), CSRF tokens bound to a
session cookie, and the response headers that keep pages out of frames and scripts out of pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

TOKEN_ENV = "PGDURABLE_DASHBOARD_TOKEN"
MIN_TOKEN = 16
SESSION_COOKIE = "pgdurable_dashboard_session"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CHALLENGE = b'Basic realm="pgdurable dashboard", charset="UTF-8"'
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class InsecureBind(ValueError):
    """The dashboard was asked to listen beyond this machine without authentication."""


def check_token(token: str, origin: str) -> str:
    """``token`` stripped, or ValueError saying what a usable token looks like."""
    token = token.strip()
    if len(token) < MIN_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError(
            f"the dashboard token from {origin} must be at least {MIN_TOKEN} printable "
            "characters without spaces; make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    return token


def load_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token from ``token_file`` if given, else from $PGDURABLE_DASHBOARD_TOKEN, else None."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token file {path}: {exc}") from exc
        return check_token(text, f"the file {path}")
    value = os.environ.get(TOKEN_ENV)
    if value is None or not value.strip():
        return None
    return check_token(value, f"${TOKEN_ENV}")


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on anything but loopback unless a token is configured."""
    if token is None and not is_loopback(host):
        raise InsecureBind(
            f"refusing to listen on {host}: that is reachable from other machines and no "
            f"authentication is configured. Set ${TOKEN_ENV} or pass --token-file FILE (a "
            "token of 16+ characters), or listen on 127.0.0.1 and reach it through an SSH "
            "tunnel or your own authenticating proxy"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def authenticate(header: str | None, token: str) -> str | None:
    """Who the Authorization header says the caller is when it carries the token (a basic
    auth user name, or "bearer"), else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return "bearer" if hmac.compare_digest(value.encode(), token.encode()) else None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if sep and hmac.compare_digest(password.encode(), token.encode()):
            return user or "basic"
    return None


class TokenAuth:
    """ASGI middleware: every request must carry the token, else 401 with a basic-auth
    challenge (so a browser asks for it; any user name, the token as password)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        who = authenticate(_header(scope, b"authorization"), self.token)
        if who is None:
            body = b"authentication required: the dashboard token, as a bearer token or as the "
            body += b"password of basic auth (any user name)\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (
                            b"www-authenticate",
                            b'Basic realm="pgdurable dashboard", charset="UTF-8"',
                        ),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["pgdurable_user"] = who
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding the headers every response of the dashboard carries."""

    HEADERS = (
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {bytes(k).lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in self.HEADERS if k not in names]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class Csrf:
    """CSRF tokens bound to a random session cookie: the token is an HMAC of the session id
    under a per-process secret, so a page from another site can neither read nor forge it,
    and a cookie planted by a sibling domain is useless without it."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.token(session), token)


def same_origin(origin: str | None, host: str | None) -> bool:
    """A POST's Origin header, when the browser sends one, must name this very host."""
    if origin is None:
        return True
    if origin == "null" or host is None:
        return False
    _, _, rest = origin.partition("://")
    return rest.rstrip("/").lower() == host.lower()
