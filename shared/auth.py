"""Verify Supabase access tokens and turn them into a typed :class:`Principal`.

Every HTTP-facing module checks the ``Authorization: Bearer <token>`` of a request here (``Container.token_verifier``;
FastAPI routes use ``shared.api.current_user``). PyJWT does the cryptography; this module decides which key
and which algorithm a token may use, so that the token's header cannot choose them:

- ``HS256`` tokens (legacy projects) are checked with the project's JWT secret (``JWT_SECRET_KEY``) and
  nothing else; without a secret, or with ``AUTH_HS256_ENABLED=false`` (a project that moved to asymmetric
  keys and revoked its legacy secret), they are refused.
- ``ES256``, ``ES512``, ``RS256``, ``RS512`` and ``EdDSA`` (Ed25519) tokens, every asymmetric algorithm
  Supabase Auth signs with, are checked with the key whose ``kid`` the project's JWKS
  (``<issuer>/.well-known/jwks.json``) publishes, and only when that key is of the token's algorithm. The key
  set is fetched through the container's httpx client (no redirect followed, at most 1 MiB, the whole answer
  within ``AUTH_JWKS_TIMEOUT_SECONDS``: a key server that trickles bytes gets a 503, not a hung request) and
  kept for ``AUTH_JWKS_CACHE_SECONDS``. A ``kid`` the cached set lacks makes one new fetch; fetches for
  unknown kids are spaced by ``AUTH_JWKS_REFETCH_SECONDS`` and each kid is tried once per interval. A kid
  that a fetch did not find is refused (401); a kid not tried yet while the interval is spent by another kid
  gets a 503 with ``retry_after`` (the keys may have just rotated: a made-up kid must not turn genuine new
  tokens into "sign in again").
- Claims: the signature, ``exp`` and ``nbf`` with ``AUTH_LEEWAY_SECONDS`` of leeway, ``aud`` (``authenticated``),
  ``iss`` (``AUTH_ISSUER``, by default ``SUPABASE_URL/auth/v1``) when present (a token customised by an
  access-token hook may lack it; it is signed by the project's key all the same), ``sub`` (a UUID), ``role``
  (``authenticated`` or ``service_role``), and a lifetime (``exp`` minus ``iat``) of at most
  ``AUTH_MAX_TOKEN_LIFETIME_SECONDS`` (a day by default; Supabase issues an hour).
- The principal carries ``is_anonymous``, ``aal`` and ``amr``: ``shared.api.PayingUser`` refuses anonymous
  users on routes that spend paid-API budget, and ``shared.api.require_user(min_aal="aal2")`` requires MFA.

Errors: a token that is missing or fails any check is an :class:`AuthenticationError` (HTTP 401; ``reason`` says
which check). When the key set is needed but cannot be fetched (no unexpired copy is cached, or the cached copy
lacks the token's ``kid`` and the new fetch fails), the answer is :class:`AuthUnavailableError` (retryable, HTTP
503): the token may be good, and the client should retry rather than sign in again. A resource of another user
is reported as not found by the caller (see :meth:`Principal.can_act_for`), so that its existence is not
revealed. No message ever contains a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jwt

from shared.errors import AuthenticationError, AuthUnavailableError, PermissionDeniedError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "ASYMMETRIC_ALGORITHMS",
    "AssuranceLevel",
    "AuthMethod",
    "AuthUnavailableError",
    "AuthenticationError",
    "PermissionDeniedError",
    "Principal",
    "Role",
    "TokenVerifier",
]

_log = logging.getLogger("shared.auth")

# What Supabase Auth signs with (internal/conf/jwk.go, GetSigningAlg): HS256 with the legacy secret, and these.
ASYMMETRIC_ALGORITHMS = ("ES256", "ES512", "RS256", "RS512", "EdDSA")
ACCEPTED_ALGORITHMS = ("HS256", *ASYMMETRIC_ALGORITHMS)
# A Supabase access token is well under 2 KB (4 KB with a hook's claims); anything far larger is refused unparsed.
MAX_TOKEN_BYTES = 8 * 1024
# A JWKS of a few keys is a few KB; a key server that sends more is not one.
MAX_JWKS_BYTES = 1024 * 1024
# Each algorithm's key: (kty, crv); a JWKS entry without "alg" is read as the first algorithm its key fits.
_KEY_TYPES = {
    "ES256": ("EC", "P-256"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "RS512": ("RSA", None),
}
_REQUIRED_CLAIMS = ["exp", "aud", "sub", "role"]
_UNAVAILABLE = "The project's signing keys (JWKS) cannot be fetched right now; retry shortly"
_TRIED_KIDS_KEPT = 1024


class AssuranceLevel(StrEnum):
    """How strongly the session was authenticated (``aal``): aal2 after a second factor (MFA)."""

    AAL1 = "aal1"
    AAL2 = "aal2"
    AAL3 = "aal3"


@dataclass(frozen=True, slots=True)
class AuthMethod:
    """One way the session was signed in (an ``amr`` entry): ``password``, ``otp``, ``totp``, ``anonymous``,
    ``sso/saml``, ``oauth``...; ``timestamp`` is when, ``provider`` the SSO provider when there is one."""

    method: str
    timestamp: int | None = None
    provider: str | None = None


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
    is_anonymous: bool = False
    aal: AssuranceLevel | None = None
    amr: tuple[AuthMethod, ...] = ()

    @property
    def methods(self) -> frozenset[str]:
        """Return the names of the ways the session was signed in (``amr``)."""
        return frozenset(entry.method for entry in self.amr)

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
        issuer: str | None = None,
        hs256_enabled: bool = True,
        max_token_lifetime_seconds: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = supabase_url.rstrip("/")
        self.issuer = issuer.rstrip("/") if issuer else f"{base}/auth/v1"
        # The keys live with the project's Auth server, whatever name its issuer goes by.
        self.jwks_url = f"{base}/auth/v1/.well-known/jwks.json"
        self._secret = (jwt_secret or None) if hs256_enabled else None
        self._hs256_enabled = hs256_enabled
        self._max_lifetime = max_token_lifetime_seconds
        self._tried_kids: dict[str, float] = {}
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

    @property
    def accepted_algorithms(self) -> tuple[str, ...]:
        """Return the algorithms a token may be signed with here (HS256 only with a secret and not turned off)."""
        return ACCEPTED_ALGORITHMS if self._secret is not None else ASYMMETRIC_ALGORITHMS

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
            accepted = ", ".join(self.accepted_algorithms)
            raise _refuse("algorithm", f"The token's algorithm is not accepted (only {accepted})")
        key = await self._key_for(str(algorithm), header.get("kid"))
        claims = self._decode(token, key, str(algorithm))
        self._check_issuer_and_lifetime(claims)
        return _principal(claims)

    async def _key_for(self, algorithm: str, kid: object) -> str | jwt.PyJWK:
        """Return the one key a token of ``algorithm`` may be checked with."""
        if algorithm == "HS256":
            if not self._hs256_enabled:
                raise _refuse(
                    "algorithm", "HS256 tokens are not accepted here (AUTH_HS256_ENABLED=false); sign in again"
                )
            if self._secret is None:
                raise _refuse("algorithm", "HS256 tokens are not accepted here: JWT_SECRET_KEY is not set")
            return self._secret
        if not isinstance(kid, str) or not kid:
            raise _refuse("unknown_key", f"An {algorithm} token must name its key (kid); sign in again")
        keys = await self._current_keys()
        found = keys.keys.get(kid)
        if found is None:
            found = await self._refetch_for(kid)
        if found is None:
            raise _refuse("unknown_key", "The token's signing key is not one of this project's keys; sign in again")
        if found.algorithm_name != algorithm:
            raise _refuse("algorithm", f"The token says {algorithm}, but its key is a {found.algorithm_name} key")
        return found

    async def _refetch_for(self, kid: str) -> jwt.PyJWK | None:
        """Fetch the keys anew for a kid the cached set lacks, once per kid and interval; 503 while spent."""
        now = self._clock()
        tried = self._tried_kids.get(kid)
        if tried is not None and now - tried < self._refetch_every:
            return None  # a fetch since this kid was first seen did not find it
        if not self._may_refetch():
            # Another kid spent the interval's fetch; this one may be a key that has just rotated in.
            assert self._last_refetch is not None  # noqa: S101 - _may_refetch is False only after a fetch
            wait = max(1.0, self._refetch_every - (now - self._last_refetch))
            msg = "The token's signing key is new to this server; retry shortly (the keys may have just rotated)"
            raise AuthUnavailableError(msg, retry_after=wait)
        self._last_refetch = now
        if len(self._tried_kids) >= _TRIED_KIDS_KEPT:
            self._tried_kids.clear()  # made-up kids must not grow the memory without end
        self._tried_kids[kid] = now
        keys = await self._fetch_keys()
        return keys.keys.get(kid)

    def _check_issuer_and_lifetime(self, claims: Mapping[str, Any]) -> None:
        issuer = claims.get("iss")
        if issuer is not None and issuer != self.issuer:
            msg = f"The access token was not issued by {self.issuer}; sign in to this project (or set AUTH_ISSUER)"
            raise _refuse("issuer", msg)
        expires, issued = claims.get("exp"), claims.get("iat", time.time())
        if not isinstance(issued, int | float) or isinstance(issued, bool):
            raise _refuse("claims", "The access token's iat is not a time; sign in again")
        if isinstance(expires, int | float) and expires - issued > self._max_lifetime + self._leeway:
            msg = (
                f"The access token lives longer than {self._max_lifetime:g} s (AUTH_MAX_TOKEN_LIFETIME_SECONDS); "
                "sign in again with a token of the project's own lifetime"
            )
            raise _refuse("lifetime", msg)

    def _decode(self, token: str, key: str | jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired", "The access token has expired; refresh the session and retry") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("not_yet_valid", "The access token is not valid yet (nbf/iat); check the clock") from None
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
        try:
            # Each fetch ends within the deadline (see _download), so a waiter waits about two of them at most.
            async with asyncio.timeout(2 * self._timeout + 1):
                await self._fetching.acquire()
        except TimeoutError:
            raise AuthUnavailableError(_UNAVAILABLE, retry_after=5) from None
        try:
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
        finally:
            self._fetching.release()

    async def _download(self) -> object:
        import httpx  # noqa: PLC0415 - the container has imported it already; kept out of this module's import

        if self._http is None:
            raise AuthUnavailableError("No HTTP client to fetch the signing keys; build the verifier in the container")
        try:
            # One deadline for the whole answer: httpx's timeout bounds each read, and a server that trickles
            # a byte a second would hold every request that needs the keys.
            async with asyncio.timeout(self._timeout):
                async with self._http.stream(
                    "GET", self.jwks_url, timeout=self._timeout, follow_redirects=False
                ) as response:
                    response.raise_for_status()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_JWKS_BYTES:
                            raise ValueError("the JWKS is larger than 1 MiB")  # noqa: TRY301 - handled below
            return json.loads(body)
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            _log.warning("fetching the JWKS failed", extra={"url": self.jwks_url, "error": type(exc).__name__})
            raise AuthUnavailableError(_UNAVAILABLE, retry_after=5) from exc


def _parse_jwks(document: object) -> dict[str, jwt.PyJWK]:
    """Keep the signing keys of the accepted algorithms that name a kid; skip every other entry."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise AuthUnavailableError("The JWKS endpoint answered without a key list; check SUPABASE_URL", retry_after=30)
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        fits = [alg for alg, (kty, crv) in _KEY_TYPES.items() if entry.get("kty") == kty and entry.get("crv") == crv]
        algorithm = entry.get("alg", fits[0] if fits else None)
        if algorithm not in fits:
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
    anonymous = claims.get("is_anonymous", False)
    if not isinstance(anonymous, bool):
        raise _refuse("claims", "The access token's is_anonymous is not true or false; sign in again")
    try:
        aal = AssuranceLevel(claims["aal"]) if claims.get("aal") is not None else None
    except ValueError:
        raise _refuse("claims", "The access token's aal is not aal1, aal2 or aal3; sign in again") from None
    return Principal(
        user_id=user_id,
        role=role,
        email=email if isinstance(email, str) and email else None,
        session_id=session_id,
        is_anonymous=anonymous,
        aal=aal,
        amr=_methods(claims.get("amr")),
    )


def _methods(value: object) -> tuple[AuthMethod, ...]:
    """Read ``amr``: objects ``{method, timestamp, provider?}`` as Auth writes them, or bare strings (a hook's)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _refuse("claims", "The access token's amr is not a list; sign in again")
    methods: list[AuthMethod] = []
    for entry in value:
        if isinstance(entry, str):
            methods.append(AuthMethod(entry))
            continue
        method = entry.get("method") if isinstance(entry, dict) else None
        if not isinstance(method, str):
            raise _refuse("claims", "An entry of the access token's amr has no method; sign in again")
        stamp, provider = entry.get("timestamp"), entry.get("provider")
        methods.append(
            AuthMethod(
                method,
                timestamp=stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None,
                provider=provider if isinstance(provider, str) and provider else None,
            )
        )
    return tuple(methods)
