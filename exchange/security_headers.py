"""Security headers on every HTTP answer, and the docs pages' own Content-Security-Policy.

Every answer: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
`Referrer-Policy: no-referrer`, and a CSP that allows nothing (`default-src 'none';
frame-ancestors 'none'`): the API answers JSON, which a browser must never run, frame
or sniff. Over HTTPS (the scheme as a trusted proxy gives it, exchange/forwarded.py):
`Strict-Transport-Security`.

HTML answers (the docs pages under /schema, where Swagger's *Authorize* takes
passwords) get a CSP that loads scripts, styles, images and fonts from this origin only
('self'), and allows the page's own inline scripts by their SHA-256 hashes, computed
from the page as it is sent (Swagger's inline script embeds the whole OpenAPI document,
so its hash changes with the API). Inline styles are allowed ('unsafe-inline' in
style-src only: the docs renderers inject styles, and a style runs no script).
"""

from __future__ import annotations

import base64
import hashlib
import re

from litestar.types import ASGIApp, Message, Receive, Scope, Send

COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
# An HTML answer is held whole to hash its scripts, up to this size; past it, it is
# sent with no inline script allowed.
HTML_HELD_MAX_BYTES = 4_000_000
_INLINE_SCRIPT = re.compile(rb"<script\b([^>]*)>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def inline_script_hashes(html: bytes) -> list[str]:
    """CSP sources ('sha256-...') of the page's inline scripts (those without src)."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
        for attributes, body in _INLINE_SCRIPT.findall(html)
        if b"src=" not in attributes.lower()
    ]


def docs_csp(html: bytes) -> bytes:
    hashes = "".join(f" {source}" for source in dict.fromkeys(inline_script_hashes(html)))
    return DOCS_CSP.format(hashes=hashes).encode()


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*COMMON_HEADERS, HSTS] if scope.get("scheme") == "https" else COMMON_HEADERS
        held: list[Message] = []
        held_bytes = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal held_bytes
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.extend(extra)
                message["headers"] = headers
                if not _is_html(headers):
                    headers.append((b"content-security-policy", API_CSP))
                    await send(message)
                    return
                held.append(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            held_bytes += len(message.get("body", b""))
            if message.get("more_body", False) and held_bytes <= HTML_HELD_MAX_BYTES:
                return
            html = b"".join(m.get("body", b"") for m in held[1:])
            start = held[0]
            csp = docs_csp(html) if held_bytes <= HTML_HELD_MAX_BYTES else docs_csp(b"")
            start["headers"].append((b"content-security-policy", csp))
            for held_message in held:
                await send(held_message)
            held.clear()

        await self.app(scope, receive, send_with_headers)


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/html") for name, value in headers)
