"""Security headers on every HTTP answer, and the docs pages' own Content-Security-Policy.

Every answer: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
`Referrer-Policy: no-referrer`, and a CSP that allows nothing (`default-src 'none';
frame-ancestors 'none'`): the API answers JSON, which a browser must never run, frame
or sniff. Over HTTPS (the scheme as a trusted proxy gives it, exchange/http/forwarded.py):
`Strict-Transport-Security`.

HTML answers (the docs pages under /schema, where Swagger's *Authorize* takes
passwords) get a CSP that loads scripts, styles, images and fonts from this origin only
('self'), with no inline script or style: the docs page is made of files the package
serves (exchange/http/api_docs). `data:` images and fonts are allowed: Swagger UI's
stylesheet embeds its icons that way, and an image runs no script.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Message, Receive, Scope, Send

COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*COMMON_HEADERS, HSTS] if scope.get("scheme") == "https" else COMMON_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.extend(extra)
                headers.append((b"content-security-policy", DOCS_CSP if _is_html(headers) else API_CSP))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/html") for name, value in headers)
