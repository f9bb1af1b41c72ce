"""The ``current_user`` dependency: the request's Supabase access token, verified, as a Principal.

``user: CurrentUser`` (or ``Depends(current_user)``) in a route answers 401 for a request without a valid token and
503 while the signing keys cannot be fetched; the verifier is the container's ``token_verifier``. It lets
anonymous sign-ins through (``user.is_anonymous``).

A route that spends paid-API budget takes ``user: PayingUser`` instead: anonymous users (anyone can make one
with the public key) get 403 ``permission_denied``. A route opts in to them, or asks for MFA, with
``Annotated[Principal, Depends(require_user(allow_anonymous=True, min_aal="aal2"))]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.api.lifespan import get_container
from shared.auth import AssuranceLevel, AuthenticationError, PermissionDeniedError, Principal, TokenVerifier
from shared.lifecycle import resolve

__all__ = ["CurrentUser", "PayingUser", "bearer_scheme", "current_user", "require_user"]

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="supabase", description="the Supabase session's access token (a JWT)"
)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """Return the principal of the request's access token.

    Raises:
        AuthenticationError: no token, or a token that fails a check (401).
        AuthUnavailableError: the signing keys cannot be fetched now (503).
    """
    if credentials is None:
        raise AuthenticationError(
            "This request needs a signed-in user: send Authorization: Bearer <the Supabase access token>",
            reason="missing",
        )
    verifier: TokenVerifier = await resolve(get_container(request).token_verifier)
    return await verifier.verify(credentials.credentials)


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_user(
    *, allow_anonymous: bool = False, min_aal: AssuranceLevel | str | None = None
) -> Callable[[Principal], Awaitable[Principal]]:
    """Return a dependency: the request's principal, refused (403) when anonymous or below ``min_aal``.

    The service role passes (it is not a signed-in person and has no ``aal``).

    Raises:
        ValidationError: ``min_aal`` is not aal1, aal2 or aal3 (when the route is declared).
    """
    level = AssuranceLevel(min_aal) if min_aal is not None else None
    order = list(AssuranceLevel)

    async def checked(user: Annotated[Principal, Depends(current_user)]) -> Principal:
        if user.is_service:
            return user
        if user.is_anonymous and not allow_anonymous:
            raise PermissionDeniedError(
                "Anonymous users cannot start paid work here; sign up or link an identity, then retry",
                reason="anonymous",
            )
        if level is not None and (user.aal is None or order.index(user.aal) < order.index(level)):
            raise PermissionDeniedError(
                f"This needs a session verified to {level.value} (MFA); verify a second factor, then retry",
                reason="mfa_required",
            )
        return user

    return checked


PayingUser = Annotated[Principal, Depends(require_user())]
"""A signed-in, non-anonymous user (or the service role): the dependency of routes that spend paid-API budget."""
