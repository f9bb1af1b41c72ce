"""Access tokens under hostile conditions: key servers that trickle, redirect and rotate; every token form
Supabase Auth mints (anonymous, MFA, phone, SAML, EdDSA, ES512, RS512, a hook's), and the forms it does not."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from pydantic import SecretStr

from shared.api.auth import require_user
from shared.auth import (
    ASYMMETRIC_ALGORITHMS,
    AssuranceLevel,
    AuthenticationError,
    AuthMethod,
    AuthUnavailableError,
    PermissionDeniedError,
    Principal,
    Role,
    TokenVerifier,
)
from shared.doctor import accepted_tokens, run_doctor
from shared.health import HealthStatus
from tests.fixtures.core import MakeSettings
from tests.fixtures.jwks import (
    JWT_SECRET,
    JwksServer,
    SigningKey,
    hook_claims,
    make_ec_key,
    make_ed25519_key,
    make_es512_key,
    make_rs512_key,
    make_rsa_key,
    sign,
    supabase_claims,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def verifier_for(server: JwksServer, http: httpx.AsyncClient, **options: Any) -> TokenVerifier:
    return TokenVerifier(supabase_url=server.url, jwt_secret=JWT_SECRET, http_client=http, **options)


async def reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    return caught.value.reason


# Key servers that trickle, redirect and rotate.


async def test_a_trickling_key_server_gets_503_within_the_deadline_for_every_waiting_request(
    jwks_server: JwksServer, http: httpx.AsyncClient
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    jwks_server.trickle_seconds = 0.2  # each read is well within httpx's timeout; the whole body is not
    verifier = verifier_for(jwks_server, http, jwks_timeout_seconds=1.0)
    token = sign(supabase_claims(jwks_server.issuer), key)
    started = time.monotonic()

    outcomes = await asyncio.gather(*(verifier.verify(token) for _ in range(50)), return_exceptions=True)

    elapsed = time.monotonic() - started
    assert {AuthUnavailableError} == {type(outcome) for outcome in outcomes}
    assert elapsed < 3.5, elapsed  # two fetch deadlines and slack, not 25 s
    assert 1 <= jwks_server.hits <= 2  # the waiters shared the fetch


async def test_a_redirecting_key_server_is_not_followed(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    other = JwksServer()
    other.start()
    try:
        key = make_ec_key()
        other.keys = [key.jwk]  # an attacker's keys at the redirect's target
        jwks_server.redirect_to = f"{other.url}/auth/v1/.well-known/jwks.json"
        verifier = verifier_for(jwks_server, http)
        with pytest.raises(AuthUnavailableError):
            await verifier.verify(sign(supabase_claims(jwks_server.issuer), key))
        assert 0 == other.hits
    finally:
        other.stop()


async def test_a_made_up_kid_does_not_turn_a_rotated_key_into_sign_in_again(
    jwks_server: JwksServer, http: httpx.AsyncClient
) -> None:
    clock = Clock()
    old, new = make_ec_key(), make_ec_key()
    jwks_server.keys = [old.jwk]
    verifier = verifier_for(jwks_server, http, jwks_refetch_seconds=30, clock=clock)
    payload = supabase_claims(jwks_server.issuer)
    await verifier.verify(sign(payload, old))
    assert "unknown_key" == await reason(verifier, sign(payload, make_ec_key()))  # spends the refetch
    jwks_server.keys = [new.jwk, old.jwk]  # the project rotates right after

    with pytest.raises(AuthUnavailableError) as caught:  # retry shortly, not "sign in again"
        await verifier.verify(sign(payload, new))
    assert caught.value.retry_after is not None
    assert 1 <= caught.value.retry_after <= 30
    clock.now += caught.value.retry_after
    principal = await verifier.verify(sign(payload, new))

    assert uuid.UUID(payload["sub"]) == principal.user_id
    assert 3 == jwks_server.hits


async def test_a_kid_already_looked_for_is_refused_without_another_fetch(
    jwks_server: JwksServer, http: httpx.AsyncClient
) -> None:
    key, stranger = make_ec_key(), make_ec_key()
    jwks_server.keys = [key.jwk]
    verifier = verifier_for(jwks_server, http, clock=Clock())
    payload = supabase_claims(jwks_server.issuer)
    await verifier.verify(sign(payload, key))
    for _ in range(5):
        assert "unknown_key" == await reason(verifier, sign(payload, stranger))
    assert 2 == jwks_server.hits


# Every token form Supabase Auth mints.


@pytest.mark.parametrize(
    "make_key",
    [make_ec_key, make_es512_key, make_rsa_key, make_rs512_key, make_ed25519_key],
    ids=["ES256", "ES512", "RS256", "RS512", "EdDSA"],
)
async def test_every_asymmetric_algorithm_auth_signs_with_is_accepted(
    jwks_server: JwksServer, http: httpx.AsyncClient, make_key: Any
) -> None:
    key: SigningKey = make_key()
    jwks_server.keys = [key.jwk]
    payload = supabase_claims(jwks_server.issuer)
    principal = await verifier_for(jwks_server, http).verify(sign(payload, key, headers={"typ": "JWT"}))
    assert uuid.UUID(payload["sub"]) == principal.user_id
    assert key.algorithm in ASYMMETRIC_ALGORITHMS


@pytest.mark.parametrize(
    ("sign_in", "anonymous", "aal", "methods"),
    [
        ("password", False, AssuranceLevel.AAL1, {"password"}),
        ("anonymous", True, AssuranceLevel.AAL1, {"anonymous"}),
        ("mfa", False, AssuranceLevel.AAL2, {"totp", "password"}),
        ("phone", False, AssuranceLevel.AAL1, {"otp"}),
        ("saml", False, AssuranceLevel.AAL1, {"sso/saml"}),
    ],
)
async def test_the_principal_carries_is_anonymous_aal_and_amr(
    jwks_server: JwksServer,
    http: httpx.AsyncClient,
    sign_in: str,
    anonymous: bool,
    aal: AssuranceLevel,
    methods: set[str],
) -> None:
    key = make_ed25519_key()
    jwks_server.keys = [key.jwk]
    principal = await verifier_for(jwks_server, http).verify(sign(supabase_claims(jwks_server.issuer, sign_in), key))
    assert (anonymous, aal, frozenset(methods)) == (principal.is_anonymous, principal.aal, principal.methods)
    if sign_in == "saml":
        assert AuthMethod("sso/saml", 1_765_000_000, "2a1e7a16-5f0e-4c2b-9f55-1d8d2f3e4b6a") == principal.amr[0]


async def test_a_hook_token_without_iss_is_accepted(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    principal = await verifier_for(jwks_server, http).verify(sign(hook_claims(jwks_server.issuer), key))
    assert (AuthMethod("password"),) == principal.amr


@pytest.mark.parametrize(
    "headers_and_secret",
    [
        ({"alg": "HS512"}, JWT_SECRET * 2),
        ({"alg": "HS384"}, JWT_SECRET * 2),
    ],
)
async def test_algorithms_auth_does_not_issue_are_refused(
    jwks_server: JwksServer, http: httpx.AsyncClient, headers_and_secret: tuple[dict[str, str], str]
) -> None:
    headers, secret = headers_and_secret
    token = jwt.encode(supabase_claims(jwks_server.issuer), secret, algorithm=headers["alg"])
    assert "algorithm" == await reason(verifier_for(jwks_server, http), token)


async def test_an_es256_header_on_an_es512_key_is_refused(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    key = make_es512_key()
    jwks_server.keys = [key.jwk]
    forged = SigningKey(key.kid, "ES256", make_ec_key().private, key.jwk)
    assert "algorithm" == await reason(
        verifier_for(jwks_server, http), sign(supabase_claims(jwks_server.issuer), forged)
    )


async def test_malformed_amr_and_aal_are_refused(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    verifier = verifier_for(jwks_server, http)
    for change in ({"aal": "aal9"}, {"amr": "password"}, {"amr": [{"timestamp": 1}]}, {"is_anonymous": "no"}):
        assert "claims" == await reason(verifier, sign(supabase_claims(jwks_server.issuer, **change), JWT_SECRET))


# HS256 off, the issuer, the lifetime.


async def test_hs256_can_be_turned_off(jwks_server: JwksServer, http: httpx.AsyncClient) -> None:
    verifier = verifier_for(jwks_server, http, hs256_enabled=False)
    assert "algorithm" == await reason(verifier, sign(supabase_claims(jwks_server.issuer), JWT_SECRET))
    assert "HS256" not in verifier.accepted_algorithms
    assert "HS256" in verifier_for(jwks_server, http).accepted_algorithms


async def test_the_issuer_is_a_setting_for_a_project_behind_a_custom_domain(
    jwks_server: JwksServer, http: httpx.AsyncClient
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    issuer = "https://abcdefghijklmnopqrst.supabase.co/auth/v1"
    verifier = verifier_for(jwks_server, http, issuer=issuer)
    await verifier.verify(sign(supabase_claims(issuer), key))
    assert "issuer" == await reason(verifier, sign(supabase_claims(jwks_server.issuer), key))
    assert 1 == jwks_server.hits  # the keys still come from SUPABASE_URL


@pytest.mark.parametrize(
    "times",
    [{"exp": 253402300799}, {"iat": int(time.time()), "exp": int(time.time()) + 2 * 86400}],
    ids=["year-9999", "two-days"],
)
async def test_a_token_living_longer_than_the_maximum_is_refused(
    jwks_server: JwksServer, http: httpx.AsyncClient, times: dict[str, int]
) -> None:
    token = sign(supabase_claims(jwks_server.issuer, "password", **times), JWT_SECRET)
    assert "lifetime" == await reason(verifier_for(jwks_server, http), token)
    await verifier_for(jwks_server, http, max_token_lifetime_seconds=10**12).verify(token)


# The paid routes' dependency, and doctor.


def principal(**changes: Any) -> Principal:
    return Principal(**{"user_id": uuid.uuid4(), "role": Role.AUTHENTICATED, "aal": AssuranceLevel.AAL1, **changes})


async def test_paying_routes_refuse_anonymous_users_unless_they_opt_in() -> None:
    anonymous = principal(is_anonymous=True)
    with pytest.raises(PermissionDeniedError) as caught:
        await require_user()(anonymous)
    assert "anonymous" == caught.value.reason
    assert anonymous == await require_user(allow_anonymous=True)(anonymous)
    service = principal(role=Role.SERVICE_ROLE, aal=None)
    assert service == await require_user(min_aal="aal2")(service)


async def test_a_route_may_require_mfa() -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        await require_user(min_aal="aal2")(principal())
    assert "mfa_required" == caught.value.reason
    verified = principal(aal=AssuranceLevel.AAL2)
    assert verified == await require_user(min_aal=AssuranceLevel.AAL2)(verified)


async def test_doctor_says_which_algorithms_are_accepted(make_settings: MakeSettings) -> None:
    with_secret = make_settings(supabase_url="https://ref.supabase.co", jwt_secret_key=SecretStr(JWT_SECRET))
    assert accepted_tokens(with_secret).startswith("accepts HS256, ES256, ES512, RS256, RS512, EdDSA tokens")
    off = with_secret.model_copy(update={"auth_hs256_enabled": False})
    assert "HS256 refused (AUTH_HS256_ENABLED=false)" in accepted_tokens(off)
    assert "accepts ES256," in accepted_tokens(off)

    async def up(_: Any) -> HealthStatus:
        return HealthStatus.since("x", time.perf_counter())

    out = io.StringIO()
    await run_doctor(off, out=out, checks={"x": up})
    assert "auth:     accepts ES256, ES512, RS256, RS512, EdDSA tokens from https://ref.supabase.co/auth/v1" in (
        out.getvalue()
    )
