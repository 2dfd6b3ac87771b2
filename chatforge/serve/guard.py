"""What keeps a web page that the user visits away from a server on their own machine.

- A Host allowlist (loopback names by default): a DNS-rebinding page reaches 127.0.0.1 under its
  own name (``Host: evil.example``), and would then read the replies as same-origin.
- POST bodies must say ``Content-Type: application/json``: a page can send a cross-origin POST
  without asking first only as a form or text/plain; JSON makes the browser ask (a CORS preflight),
  and this server answers no preflight.
- Binding beyond loopback without an API key is refused unless the user says so.

The same checks as Starlette's TrustedHostMiddleware, with errors in OpenAI's shape.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from chatforge.serve.errors import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without the port: "[::1]:8000" -> "::1", "a.b:80" -> "a.b"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts_for(bind_host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The loopback names, the address the server binds (when it is one address, not 0.0.0.0
    or ::), and ``extra`` names given by the user ("*" allows any)."""
    names = [*LOOPBACK_NAMES, *extra]
    if bind_host not in ("0.0.0.0", "::", ""):
        names.append(bind_host.strip("[]"))
    return tuple(dict.fromkeys(n.lower() for n in names))


class HostAllowlist:
    """ASGI middleware: a request whose Host is not on the list gets 400 before any route runs."""

    def __init__(self, app, allowed: Iterable[str] = LOOPBACK_NAMES):
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and ANY_HOST not in self.allowed:
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.allowed:
                error = ApiError(400, f"Host {header!r} is not one of this server's names "
                                      f"({', '.join(sorted(self.allowed))}); start it with --allowed-host NAME to "
                                      "serve under another name.", code="invalid_host")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_json_content_type(content_type: str | None) -> None:
    """ApiError 415 unless the header names application/json (parameters such as charset allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"Content-Type must be application/json (got {content_type or 'none'}).",
                       code="unsupported_media_type")
