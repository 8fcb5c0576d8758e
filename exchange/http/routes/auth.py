"""POST /api/v1/auth/register, /auth/token (OAuth2 password flow) and /auth/logout.

Register and token are rate limited per client IP and per email (exchange/auth/ratelimit.py)
before any bcrypt work is spent. The client IP is the peer address, or behind a proxy
named in FORWARDED_ALLOW_IPS the one it vouches for (exchange/http/forwarded.py).
"""

from __future__ import annotations

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody, URLEncodedBody

from exchange.auth.emails import checked_email, normal_email
from exchange.auth.security import AuthUser, check_password_rules, hash_password, issue_token, verify_password
from exchange.http.bodies import form_body_only
from exchange.http.errors import HTTPError, documented
from exchange.http.services import Services
from exchange.schemas import RegisterRequest, Token, TokenForm, User
from exchange.store import repository as repo


@post(
    "/auth/register",
    status_code=201,
    tags=["auth"],
    summary="Create an account",
    responses=documented(400, 409, 413, 415, 422, 429, 503),
)
async def register(
    data: JSONBody[RegisterRequest], request: Request, services: NamedDependency[Services]
) -> User:
    """Email and a password of 8+ characters and at most 72 bytes in UTF-8: bcrypt reads
    no further, so longer passwords are refused. The email is stored normalised (NFKC,
    case-folded) and unique in that form; spaces, invisible, control and bidi characters,
    combining marks left in the local part (422 `email_invalid_characters`) and a
    non-ASCII domain (422 `email_domain_not_ascii`: use its `xn--` form) are refused.
    Rate limited per client IP and per email (429 `rate_limited`, `Retry-After`)."""
    email = checked_email(data.email)
    await services.rate_limiter.check("register", client_ip(request), email)
    check_password_rules(data.password)
    password_hash = await hash_password(data.password, services.settings.bcrypt_rounds)
    return await repo.create_user(services.pool, email, password_hash)


@post(
    "/auth/token",
    status_code=200,
    tags=["auth"],
    summary="Log in (OAuth2 password flow)",
    responses=documented(400, 401, 403, 413, 415, 429, 503),
    before_request=form_body_only,
)
async def token(
    data: URLEncodedBody[TokenForm],
    request: Request,
    services: NamedDependency[Services],
) -> Response[Token]:
    """Form fields `username` (the email) and `password`; answers a bearer token.
    403 `user_disabled` comes only after the right password. Rate limited (429
    `rate_limited`, `Retry-After`): every attempt per client IP; wrong passwords per
    email from one IP, and per email from all IPs for the IPs that sent them (another
    IP's wrong passwords never keep the account's owner out)."""
    # Found by its normal form, as stored (exchange/auth/emails.py): full-width ADA@example.com is ada's.
    credentials = await repo.credentials_by_email(services.pool, normal_email(data.username))
    # Counted on the account's own email when there is one (one counter for every
    # spelling that finds it, even an account stored before emails were normalised).
    email = normal_email(data.username) if credentials is None else credentials.email
    ip = client_ip(request)
    limiter = services.rate_limiter
    await limiter.check_login(ip, email)
    if credentials is None:
        # Spend the same bcrypt time as for a real user: timing tells nothing.
        await verify_password(data.password, services.dummy_password_hash)
        await limiter.login_failed(ip, email)
        raise invalid_credentials()
    if not await verify_password(data.password, credentials.password_hash):
        await limiter.login_failed(ip, email)
        raise invalid_credentials()
    await limiter.login_succeeded(ip, email)
    if credentials.disabled:
        raise HTTPError("user_disabled", "this account is disabled", 403)
    settings = services.settings
    body = Token(
        access_token=issue_token(settings, credentials.id, credentials.role),
        expires_in=settings.jwt_ttl_seconds,
    )
    return Response(body, headers={"Cache-Control": "no-store"})


def invalid_credentials() -> HTTPError:
    return HTTPError("invalid_credentials", "wrong email or password", 401)


@post(
    "/auth/logout",
    status_code=204,
    tags=["auth"],
    summary="Revoke the access token this request carries",
    responses=documented(401, 503),
)
async def logout(request: Request[AuthUser, str, State], services: NamedDependency[Services]) -> None:
    """The token answers 401 everywhere from now until it expires; the user's other
    tokens keep working. 503 if Redis is down: then nothing was revoked."""
    await services.denylist.revoke(request.user.jti, request.user.exp)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
