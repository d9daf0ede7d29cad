"""Who may talk to the viewer, and how much: the access token and the size of incoming messages.

viser serves its web page and its websocket on one port through the ``websockets`` library. It
offers no hook for either, so while :func:`hardened_server` constructs the ``viser.ViserServer``
(whose constructor returns once the server listens) it wraps ``websockets.asyncio.server.serve``,
which viser calls on its event-loop thread, to

* cap incoming messages at :data:`MAX_MESSAGE_BYTES` (viser asks for 50 MiB: twenty browsers
  sending that much would hold a gigabyte; the largest message a browser sends is a 512 KiB
  chunk of a file upload), and
* put :class:`TokenGuard` in front of viser's own HTTP handler: with a token, every HTTP request,
  the websocket upgrade included, needs it, either as ``?token=`` in the URL or in the cookie
  that the first page request carrying it sets. The viser web page opens its websocket at the
  page's address without the query string, so the cookie is what carries the token there;
  Python clients (:class:`viewer.protocol.ViserClient`) may put it in the URL.

The wrap lasts only while the server starts and is serialised by a lock, so no other code sees it.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import logging
import re
import secrets
import threading
from contextlib import contextmanager
from http.cookies import CookieError, SimpleCookie
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

from recon.errors import ConfigError

MAX_MESSAGE_BYTES = 1 << 20
"""Largest websocket message the viewer accepts from a browser (a bigger one closes that connection, code 1009)."""

TOKEN_AUTO, TOKEN_NONE = "auto", "none"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]{8,256}")
_START_LOCK = threading.Lock()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``; any other
    address or name, 0.0.0.0 included, may be reachable from other machines."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(setting: str | None, host: str) -> str | None:
    """The token the viewer requires, from its ``token`` setting: ``auto`` (a random token unless
    ``host`` is loopback), ``none`` (no token, explicitly), or the token itself (8 to 256 URL-safe
    characters: letters, digits, ``-``, ``_``)."""
    setting = TOKEN_AUTO if setting is None else setting
    if setting == TOKEN_NONE:
        return None
    if setting == TOKEN_AUTO:
        return None if is_loopback(host) else secrets.token_urlsafe(24)
    if not _TOKEN_CHARS.fullmatch(setting):
        raise ConfigError("viewer token must be 8 to 256 letters, digits, '-' or '_' (or 'auto', or 'none' to disable it)")
    return setting


def cookie_name(port: int) -> str:
    """Cookies are per host, not per port: one name per port keeps two viewers on a machine apart."""
    return f"recon_viewer_token_{port}"


class TokenGuard:
    """``process_request`` for websockets' server: 401 without a token, 403 with a wrong one;
    otherwise viser's handler (``inner``) answers, and a page request whose URL carried the token
    gets it as a cookie, for the websocket the page opens next."""

    def __init__(self, token: str, inner: Any):
        self.token = token
        self.inner = inner
        self.rejected = 0

    def _given(self, connection: Any, request: Any) -> tuple[str | None, bool]:
        """(the token the request carries, whether it came in the URL)."""
        query = parse_qs(urlsplit(request.path).query).get("token")
        if query:
            return query[0], True
        try:
            morsel = SimpleCookie(request.headers.get("Cookie", "")).get(cookie_name(connection.local_address[1]))
        except CookieError:
            morsel = None
        return (morsel.value if morsel is not None else None), False

    def __call__(self, connection: Any, request: Any) -> Any:
        given, in_url = self._given(connection, request)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            self.rejected += 1
            if given is None:
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "This viewer needs its access token: open the URL it printed (with ?token=...).\n")
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Wrong viewer access token.\n")
        response = self.inner(connection, request) if self.inner is not None else None
        if response is not None and in_url:
            port = connection.local_address[1]
            response.headers["Set-Cookie"] = f"{cookie_name(port)}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        return response


class _OneLineDrops(logging.Filter):
    """websockets logs a traceback when viser's handler fails on a message it cannot decode (not
    msgpack, an unknown type, ...): a browser's bug or a stranger's probe, not the user's. Make it
    one line (with the error); the connection is closed (code 1011) and the server goes on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "connection handler failed" and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"viewer: closed a connection that sent a message it could not handle ({type(exc).__name__}: {str(exc)[:200]})", None, None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _quiet_drops() -> None:
    logger = logging.getLogger("websockets.server")
    if not any(isinstance(f, _OneLineDrops) for f in logger.filters):
        logger.addFilter(_OneLineDrops())


@contextmanager
def hardened_server(token: str | None) -> Iterator[list[TokenGuard]]:
    """Within this block, a viser server being constructed gets :data:`MAX_MESSAGE_BYTES` and, if
    ``token``, a :class:`TokenGuard` (yielded in the list once the server is built)."""
    import websockets.asyncio.server as ws_server

    original = ws_server.serve
    guards: list[TokenGuard] = []

    class serve(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["max_size"] = MAX_MESSAGE_BYTES
            if token is not None:
                guards.append(TokenGuard(token, kwargs.get("process_request")))
                kwargs["process_request"] = guards[-1]
            super().__init__(*args, **kwargs)

    _quiet_drops()
    with _START_LOCK:
        ws_server.serve = serve
        try:
            yield guards
        finally:
            ws_server.serve = original
