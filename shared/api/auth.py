"""The ``current_user`` dependency: the request's Supabase access token, verified, as a Principal.

``user: CurrentUser`` (or ``Depends(current_user)``) in a route answers 401 for a request without a valid token and
503 while the signing keys cannot be fetched; the verifier is the container's ``token_verifier``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.api.lifespan import get_container
from shared.auth import AuthenticationError, Principal, TokenVerifier
from shared.lifecycle import resolve

__all__ = ["CurrentUser", "bearer_scheme", "current_user"]

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
