"""How request bodies are read: the right media type, exact decimals, and every
undecodable body answered 4xx, never 500.

Litestar reads a JSON body whatever its Content-Type and decodes JSON numbers as
floats (so 0.1000000000000000001 would become 0.1); undecodable UTF-8 and deeply
nested arrays escape its error handling as 500s. ExchangeRequest reads JSON bodies
itself; the size limit (MAX_BODY_BYTES, chunked bodies included) stays Litestar's.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request
from litestar.types import Empty

from exchange.http.errors import HTTPError

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# JSON numbers with a fraction or exponent become Decimal exactly, never a float.
_JSON = msgspec.json.Decoder(float_hook=Decimal)


def unsupported_media_type(expected: str) -> HTTPError:
    return HTTPError("unsupported_media_type", f"send the body as {expected}", 415, {"expected": expected})


def malformed_body(reason: str) -> HTTPError:
    return HTTPError("validation_error", f"the body is not valid JSON: {reason}", 400)


class ExchangeRequest(Request):
    """Request whose JSON body must say `Content-Type: application/json` (or `+json`)."""

    __slots__ = ()

    async def json(self) -> Any:
        media_type = self.content_type[0]
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise unsupported_media_type("application/json")
        if self._json is not Empty:
            return self._json
        body = await self.body()  # at most MAX_BODY_BYTES, or 413 already
        try:
            self._json = _JSON.decode(body)
        except msgspec.DecodeError as exc:
            raise malformed_body(str(exc)) from None
        except UnicodeDecodeError:
            raise malformed_body("it is not UTF-8") from None
        except RecursionError:
            raise malformed_body("it is nested too deeply") from None
        except ArithmeticError:  # decimal.InvalidOperation: 1e-9999999999999999999
            raise malformed_body("a number's exponent is out of range") from None
        return self._json


async def form_body_only(request: Request) -> None:
    """before_request hook of a form route: Litestar would parse any body as a form."""
    if request.content_type[0] != FORM_MEDIA_TYPE:
        raise unsupported_media_type(FORM_MEDIA_TYPE)
