"""Verify Supabase access tokens and turn them into a typed :class:`Principal`.

Every HTTP-facing module checks the ``Authorization: Bearer <token>`` of a request here (``Container.token_verifier``;
FastAPI routes use ``shared.api.current_user``). PyJWT does the cryptography; this module decides which key
and which algorithm a token may use, so that the token's header cannot choose them:

- ``HS256`` tokens (legacy projects) are checked with the project's JWT secret (``JWT_SECRET_KEY``) and
  nothing else; without a secret they are refused.
- ``ES256`` and ``RS256`` tokens are checked with the key whose ``kid`` the project's JWKS
  (``SUPABASE_URL/auth/v1/.well-known/jwks.json``) publishes, and only when that key is of the token's
  algorithm. The key set is fetched through the container's httpx client and kept for
  ``AUTH_JWKS_CACHE_SECONDS``. A ``kid`` the cached set lacks makes one new fetch (at most one per
  ``AUTH_JWKS_REFETCH_SECONDS``: a rotated key is found, a made-up one costs nothing), then is refused.
- Claims: the signature, ``exp`` and ``nbf`` with ``AUTH_LEEWAY_SECONDS`` of leeway, ``aud`` (``authenticated``),
  ``iss`` (``SUPABASE_URL/auth/v1``), ``sub`` (a UUID) and ``role`` (``authenticated`` or ``service_role``).

Errors: a token that is missing or fails any check is an :class:`AuthenticationError` (HTTP 401; ``reason`` says
which check). When the key set is needed but cannot be fetched (no unexpired copy is cached, or the cached copy
lacks the token's ``kid`` and the new fetch fails), the answer is :class:`AuthUnavailableError` (retryable, HTTP
503): the token may be good, and the client should retry rather than sign in again. A resource of another user
is reported as not found by the caller (see :meth:`Principal.can_act_for`), so that its existence is not
revealed. No message ever contains a token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jwt

from shared.errors import AuthenticationError, AuthUnavailableError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "AuthUnavailableError",
    "AuthenticationError",
    "Principal",
    "Role",
    "TokenVerifier",
]

_log = logging.getLogger("shared.auth")

ACCEPTED_ALGORITHMS = ("HS256", "ES256", "RS256")
# A Supabase access token is well under 2 KB; anything far larger is refused before it is parsed.
MAX_TOKEN_BYTES = 8 * 1024
_KEY_TYPES = {"ES256": ("EC", "P-256"), "RS256": ("RSA", None)}
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub", "role"]
_UNAVAILABLE = "The project's signing keys (JWKS) cannot be fetched right now; retry shortly"


class Role(StrEnum):
    """The roles a verified token may carry; ``anon`` (the public key's role) is not a user and is refused."""

    AUTHENTICATED = "authenticated"
    SERVICE_ROLE = "service_role"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: UUID
    role: Role
    email: str | None = None
    session_id: UUID | None = None

    @property
    def is_service(self) -> bool:
        """Return whether this is the service role, which may act for any user."""
        return self.role is Role.SERVICE_ROLE

    def can_act_for(self, user_id: UUID) -> bool:
        """Return whether this principal may read or write ``user_id``'s resources (its own, or any as service)."""
        return self.is_service or self.user_id == user_id


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: Mapping[str, jwt.PyJWK]
    expires_at: float


def _refuse(reason: str, message: str) -> AuthenticationError:
    return AuthenticationError(message, reason=reason)


class TokenVerifier:
    """Verify Supabase access tokens (``Container.token_verifier``): one per process and event loop."""

    def __init__(
        self,
        *,
        supabase_url: str,
        jwt_secret: str | None,
        http_client: httpx.AsyncClient | None,
        audience: str = Role.AUTHENTICATED.value,
        leeway_seconds: float = 10.0,
        jwks_cache_seconds: float = 600.0,
        jwks_refetch_seconds: float = 30.0,
        jwks_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = supabase_url.rstrip("/")
        self.issuer = f"{base}/auth/v1"
        self.jwks_url = f"{self.issuer}/.well-known/jwks.json"
        self._secret = jwt_secret or None
        self._http = http_client
        self._audience = audience
        self._leeway = leeway_seconds
        self._ttl = jwks_cache_seconds
        self._refetch_every = jwks_refetch_seconds
        self._timeout = jwks_timeout_seconds
        self._clock = clock
        self._keys: _KeySet | None = None
        self._attempts = 0
        self._failure: AuthUnavailableError | None = None
        self._last_refetch: float | None = None
        self._fetching = asyncio.Lock()

    def __repr__(self) -> str:
        secret = "set" if self._secret else "unset"
        return f"TokenVerifier(issuer={self.issuer!r}, hs256_secret={secret})"

    async def verify(self, token: str) -> Principal:
        """Check ``token`` (the part after ``Bearer``) and return its principal.

        Raises:
            AuthenticationError: the token is missing, malformed, or fails a check (``reason`` says which).
            AuthUnavailableError: the token needs the JWKS, which cannot be fetched and has no unexpired copy.
        """
        if not token:
            raise _refuse("missing", "No access token; send Authorization: Bearer <the Supabase access token>")
        if len(token) > MAX_TOKEN_BYTES:
            raise _refuse("malformed", "The access token is too large to be a Supabase access token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed", "The access token is not a JWT; send the session's access_token") from None
        algorithm = header.get("alg")
        if algorithm not in ACCEPTED_ALGORITHMS:
            # The header's own words are not echoed: they are the caller's input.
            raise _refuse("algorithm", "The token's algorithm is not accepted (only HS256, ES256 and RS256)")
        key = await self._key_for(str(algorithm), header.get("kid"))
        claims = self._decode(token, key, str(algorithm))
        return _principal(claims)

    async def _key_for(self, algorithm: str, kid: object) -> str | jwt.PyJWK:
        """Return the one key a token of ``algorithm`` may be checked with."""
        if algorithm == "HS256":
            if self._secret is None:
                raise _refuse("algorithm", "HS256 tokens are not accepted here: JWT_SECRET_KEY is not set")
            return self._secret
        if not isinstance(kid, str) or not kid:
            raise _refuse("unknown_key", f"An {algorithm} token must name its key (kid); sign in again")
        keys = await self._current_keys()
        found = keys.keys.get(kid)
        if found is None and self._may_refetch():
            self._last_refetch = self._clock()
            keys = await self._fetch_keys()
            found = keys.keys.get(kid)
        if found is None:
            raise _refuse("unknown_key", "The token's signing key is not one of this project's keys; sign in again")
        if found.algorithm_name != algorithm:
            raise _refuse("algorithm", f"The token says {algorithm}, but its key is a {found.algorithm_name} key")
        return found

    def _decode(self, token: str, key: str | jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired", "The access token has expired; refresh the session and retry") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("not_yet_valid", "The access token is not valid yet (nbf/iat); check the clock") from None
        except jwt.InvalidIssuerError:
            msg = f"The access token was not issued by {self.issuer}; sign in to this project"
            raise _refuse("issuer", msg) from None
        except jwt.InvalidAudienceError:
            raise _refuse("audience", f"The access token is not meant for '{self._audience}'; sign in again") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse("claims", f"The access token lacks the '{exc.claim}' claim; sign in again") from None
        except jwt.InvalidSignatureError:
            raise _refuse("signature", "The access token's signature does not match; sign in again") from None
        except jwt.PyJWTError:
            # DecodeError, InvalidKeyError, InvalidAlgorithmError...: the token cannot be trusted, whatever the cause.
            raise _refuse("malformed", "The access token could not be verified; sign in again") from None

    def _may_refetch(self) -> bool:
        """Allow one fetch for an unknown kid per refetch interval (a made-up kid must not cost a request each)."""
        return self._last_refetch is None or self._clock() - self._last_refetch >= self._refetch_every

    async def _current_keys(self) -> _KeySet:
        """Return the cached key set while it is fresh, else fetch it (one fetch for many waiting requests)."""
        cached = self._keys
        if cached is not None and self._clock() < cached.expires_at:
            return cached
        return await self._fetch_keys()

    async def _fetch_keys(self) -> _KeySet:
        """Fetch the key set; requests that waited while another fetched share that fetch's outcome."""
        attempt = self._attempts
        async with self._fetching:
            if self._attempts != attempt:
                if self._failure is None and self._keys is not None:
                    return self._keys
                raise AuthUnavailableError(_UNAVAILABLE, retry_after=5) from self._failure
            # Until this fetch succeeds, it counts as failed (also if the request is cancelled mid-way), so that
            # no waiter ever takes an expired copy for a fresh one.
            self._failure = AuthUnavailableError(_UNAVAILABLE, retry_after=5)
            try:
                keys = _parse_jwks(await self._download())
            except AuthUnavailableError as error:
                self._failure = error
                raise
            else:
                self._failure = None
                self._keys = _KeySet(keys, self._clock() + self._ttl)
                return self._keys
            finally:
                self._attempts += 1  # counted when done: every request that waited meanwhile shares the outcome

    async def _download(self) -> object:
        import httpx  # noqa: PLC0415 - the container has imported it already; kept out of this module's import

        if self._http is None:
            raise AuthUnavailableError("No HTTP client to fetch the signing keys; build the verifier in the container")
        try:
            response = await self._http.get(self.jwks_url, timeout=self._timeout)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            _log.warning("fetching the JWKS failed", extra={"url": self.jwks_url, "error": type(exc).__name__})
            raise AuthUnavailableError(_UNAVAILABLE, retry_after=5) from exc


def _parse_jwks(document: object) -> dict[str, jwt.PyJWK]:
    """Keep the ES256 (P-256) and RS256 signing keys that name a kid; skip every other entry."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise AuthUnavailableError("The JWKS endpoint answered without a key list; check SUPABASE_URL", retry_after=30)
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        algorithm = next(
            (alg for alg, (kty, crv) in _KEY_TYPES.items() if entry.get("kty") == kty and entry.get("crv") == crv),
            None,
        )
        if algorithm is None or entry.get("alg", algorithm) != algorithm:
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm)
        except jwt.PyJWTError:
            _log.warning("skipping an unusable JWKS entry", extra={"kid": entry["kid"]})
    return keys


def _principal(claims: Mapping[str, Any]) -> Principal:
    try:
        role = Role(claims["role"])
    except ValueError:
        raise _refuse("role", "The access token's role may not call this API; sign in as a user") from None
    try:
        user_id = UUID(str(claims["sub"]))
    except ValueError:
        raise _refuse("claims", "The access token's subject is not a user id; sign in again") from None
    email = claims.get("email")
    session = claims.get("session_id")
    try:
        session_id = UUID(str(session)) if session else None
    except ValueError:
        raise _refuse("claims", "The access token's session_id is not an id; sign in again") from None
    return Principal(
        user_id=user_id, role=role, email=email if isinstance(email, str) and email else None, session_id=session_id
    )
