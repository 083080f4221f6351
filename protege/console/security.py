"""The console's guards: signed session cookies, the login gate, CSRF and same-origin checks,
and the security headers every response carries.

A session is a small JSON object in an HMAC-SHA256-signed cookie (HttpOnly, SameSite=Strict):
whether the console token was given, the session's CSRF token, one flash message, when it was
issued. The signing key is derived from the console token when one is set (sessions outlive a
restart, and end when the token changes), else random per process. A cookie whose signature
does not match, or older than ``MAX_AGE_S``, is a fresh session.

A POST passes only when its form's ``csrf`` equals the session's (constant time) and it comes
from the console's own origin: an ``Origin`` (or ``Referer``) naming another origin, or a
``Sec-Fetch-Site`` other than same-origin, is refused. (Under ``Referrer-Policy: no-referrer``
browsers send ``Origin: null`` with same-origin form posts, so ``null`` alone is not refused:
the CSRF token and the SameSite cookie still hold.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp

COOKIE: Final = "protege_console"
MAX_AGE_S: Final = 12 * 3600
MAX_FORM_BYTES: Final = 1024 * 1024
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Reachable without the token: the login form itself and the stylesheet.
_OPEN: Final = "/login"
_OPEN_PREFIX: Final = "/static/"


class Refused(Exception):
    """A request the console will not act on (403): a bad CSRF token, another origin."""


def signing_key(token: str | None) -> bytes:
    """The session key: derived from the console token, else random for this process."""
    if token is None:
        return secrets.token_bytes(32)
    return hmac.new(token.encode(), b"protege-console-session", hashlib.sha256).digest()


@dataclass
class Session:
    """One browser's session, as its signed cookie carries it."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    authenticated: bool = False
    flash: str | None = None
    issued: float = field(default_factory=time.time)
    changed: bool = True  # to be sent back as a cookie

    def pop_flash(self) -> str | None:
        message, self.flash = self.flash, None
        if message is not None:
            self.changed = True
        return message

    def flash_next(self, message: str) -> None:
        self.flash, self.changed = message, True


def encode_session(session: Session, key: bytes) -> str:
    body = {"c": session.csrf, "a": session.authenticated, "f": session.flash, "i": session.issued}
    payload = base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")
    return f"{payload}.{_sign(payload, key)}"


def decode_session(cookie: str | None, key: bytes, now: float) -> Session:
    """The session in ``cookie``; a fresh one if it is missing, forged or expired."""
    if not cookie or "." not in cookie:
        return Session()
    payload, signature = cookie.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(payload, key)):
        return Session()
    try:
        body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session = Session(str(body["c"]), body["a"] is True, body["f"], float(body["i"]), False)
    except (ValueError, KeyError, TypeError):
        return Session()
    return session if now - session.issued <= MAX_AGE_S else Session()


def _sign(payload: str, key: bytes) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def same_origin(headers: Mapping[str, str], own: str) -> bool:
    """Whether a request with ``headers`` comes from the origin ``own`` (scheme://host)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        return origin == own
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == own
    return True


def safe_next(target: str | None) -> str:
    """A post-login destination: a path of this console, never another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


async def checked_form(request: Request) -> dict[str, str]:
    """The POSTed form (URL-encoded), once its CSRF token and origin are the console's own;
    ``Refused`` otherwise."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if not same_origin(request.headers, own):
        raise Refused("this form was posted from another site")
    form = await read_form(request)
    session: Session = request.state.session
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise Refused("this form is stale or forged (its CSRF token does not match); reload it")
    return form


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded body as field -> first value."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused("the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


class Guard(BaseHTTPMiddleware):
    """Loads the session, sends people without it to the login form, adds the headers."""

    def __init__(self, app: ASGIApp, token: str | None, key: bytes) -> None:
        super().__init__(app)
        self._token = token
        self._key = key

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        session = decode_session(request.cookies.get(COOKIE), self._key, time.time())
        request.state.session = session
        if self._token is not None and not session.authenticated and not self._open(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response: Response = RedirectResponse(f"/login?next={quote(target)}", 303)
        else:
            response = await call_next(request)
            session = request.state.session  # a handler may have started a new one
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if session.changed:
            response.set_cookie(
                COOKIE, encode_session(session, self._key), max_age=MAX_AGE_S, path="/",
                httponly=True, samesite="strict", secure=request.url.scheme == "https",
            )  # fmt: skip
        return response

    @staticmethod
    def _open(request: Request) -> bool:
        path = request.url.path
        return path == _OPEN or path.startswith(_OPEN_PREFIX)


def login_ok(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())

