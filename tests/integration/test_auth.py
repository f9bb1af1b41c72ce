"""Access tokens signed by keys the tests make, checked against a real JWKS server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from containers import Container
from shared.auth import AssuranceLevel, AuthenticationError, AuthUnavailableError, Principal, Role, TokenVerifier
from shared.config import Settings
from shared.errors import ConfigError
from shared.lifecycle import lifespan, resolve
from tests.fixtures.jwks import JWT_SECRET, JwksServer, claims, forge, make_ec_key, make_rsa_key, sign


class Clock:
    """A monotonic clock the test moves by hand, for the key set's expiry (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(jwks_server: JwksServer, http: httpx.AsyncClient, clock: Clock) -> TokenVerifier:
    return TokenVerifier(
        supabase_url=jwks_server.url,
        jwt_secret=JWT_SECRET,
        http_client=http,
        jwks_cache_seconds=600,
        jwks_refetch_seconds=30,
        clock=clock,
    )


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    assert len(token) < 8 or token not in str(caught.value)
    return caught.value.reason


async def test_hs256_token_with_the_project_secret_gives_its_principal(
    verifier: TokenVerifier, jwks_server: JwksServer
) -> None:
    payload = claims(jwks_server.issuer)
    principal = await verifier.verify(sign(payload, JWT_SECRET))
    expected = Principal(
        user_id=uuid.UUID(payload["sub"]),
        role=Role.AUTHENTICATED,
        email="user@example.com",
        session_id=uuid.UUID(payload["session_id"]),
        aal=AssuranceLevel.AAL1,
    )
    assert expected == principal
    assert 0 == jwks_server.hits  # HS256 needs no key set


@pytest.mark.parametrize("make_key", [make_ec_key, make_rsa_key], ids=["ES256", "RS256"])
async def test_asymmetric_token_is_checked_with_the_jwks_key(
    verifier: TokenVerifier, jwks_server: JwksServer, make_key: object
) -> None:
    key = make_key()  # type: ignore[operator]
    jwks_server.keys = [make_ec_key().jwk, key.jwk]
    payload = claims(jwks_server.issuer)
    for _ in range(3):
        assert uuid.UUID(payload["sub"]) == (await verifier.verify(sign(payload, key))).user_id
    assert 1 == jwks_server.hits  # fetched once, then cached


async def test_expired_token_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    past = int(time.time()) - 3600
    assert "expired" == await refused(verifier, sign(claims(jwks_server.issuer, iat=past - 60, exp=past), JWT_SECRET))


async def test_a_few_seconds_of_clock_skew_are_forgiven(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    now = int(time.time())
    token = sign(claims(jwks_server.issuer, exp=now - 2, nbf=now + 2), JWT_SECRET)
    assert Role.AUTHENTICATED == (await verifier.verify(token)).role


async def test_token_not_valid_yet_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    token = sign(claims(jwks_server.issuer, nbf=int(time.time()) + 600), JWT_SECRET)
    assert "not_yet_valid" == await refused(verifier, token)


async def test_token_of_another_project_is_refused(verifier: TokenVerifier) -> None:
    token = sign(claims("https://other-project.supabase.co/auth/v1"), JWT_SECRET)
    assert "issuer" == await refused(verifier, token)


async def test_token_for_another_audience_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    assert "audience" == await refused(verifier, sign(claims(jwks_server.issuer, aud="anon"), JWT_SECRET))


async def test_alg_none_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT"}, claims(jwks_server.issuer), secret=None)
        assert "algorithm" == await refused(verifier, token)


async def test_hs256_signed_with_the_public_key_is_refused(
    verifier: TokenVerifier, jwks_server: JwksServer, http: httpx.AsyncClient
) -> None:
    """The HS/RS confusion: the RSA public key (PEM or JWK text) used as an HMAC secret."""
    key = make_rsa_key()
    jwks_server.keys = [key.jwk]
    payload = claims(jwks_server.issuer)
    for secret in (key.public_pem, json.dumps(key.jwk).encode()):
        token = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload, secret)
        assert "signature" == await refused(verifier, token)
    no_secret = TokenVerifier(supabase_url=jwks_server.url, jwt_secret=None, http_client=http)
    token = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload, key.public_pem)
    assert "algorithm" == await refused(no_secret, token)


async def test_a_token_whose_header_names_another_algorithm_than_its_key_is_refused(
    verifier: TokenVerifier, jwks_server: JwksServer
) -> None:
    ec_key = make_ec_key()
    jwks_server.keys = [ec_key.jwk]
    rsa_key = make_rsa_key(kid=ec_key.kid)  # signs RS256 under the EC key's kid
    assert "algorithm" == await refused(verifier, sign(claims(jwks_server.issuer), rsa_key))


async def test_unknown_kid_refetches_once_then_is_refused(
    verifier: TokenVerifier, jwks_server: JwksServer, clock: Clock
) -> None:
    known, stranger = make_ec_key(), make_ec_key()
    jwks_server.keys = [known.jwk]
    payload = claims(jwks_server.issuer)
    await verifier.verify(sign(payload, known))
    assert "unknown_key" == await refused(verifier, sign(payload, stranger))
    assert 2 == jwks_server.hits  # the first fetch, and one more for the unknown kid
    assert "unknown_key" == await refused(verifier, sign(payload, stranger))
    with pytest.raises(AuthUnavailableError):  # a kid not tried yet, the interval's fetch spent: retry, not 401
        await verifier.verify(sign(payload, make_ec_key()))
    assert 2 == jwks_server.hits  # within the refetch interval a made-up kid costs no request
    clock.now += 31
    jwks_server.keys = [known.jwk, stranger.jwk]  # the project rotated its keys
    assert uuid.UUID(payload["sub"]) == (await verifier.verify(sign(payload, stranger))).user_id
    assert 3 == jwks_server.hits


async def test_a_token_without_kid_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    import jwt  # noqa: PLC0415

    token = jwt.encode(claims(jwks_server.issuer), key.private, algorithm="ES256")
    assert "unknown_key" == await refused(verifier, token)


async def test_tampered_payload_is_refused(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    for signer in (key, JWT_SECRET):
        header, _, signature = sign(claims(jwks_server.issuer), signer).split(".")
        evil = claims(jwks_server.issuer, role="service_role")
        body = base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=").decode()
        assert "signature" == await refused(verifier, f"{header}.{body}.{signature}")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"role": "anon"}, "role"),
        ({"role": "supabase_admin"}, "role"),
        ({"sub": None}, "claims"),
        ({"sub": "not-a-uuid"}, "claims"),
        ({"exp": None}, "claims"),
        ({"session_id": "nope"}, "claims"),
    ],
)
async def test_claims_outside_the_contract_are_refused(
    verifier: TokenVerifier, jwks_server: JwksServer, changes: dict[str, object], reason: str
) -> None:
    assert reason == await refused(verifier, sign(claims(jwks_server.issuer, **changes), JWT_SECRET))


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 9000])
async def test_garbage_is_refused_as_unauthenticated(verifier: TokenVerifier, token: str) -> None:
    assert await refused(verifier, token) in {"missing", "malformed"}


async def test_service_role_may_act_for_anyone(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    service = await verifier.verify(sign(claims(jwks_server.issuer, role="service_role"), JWT_SECRET))
    user = await verifier.verify(sign(claims(jwks_server.issuer), JWT_SECRET))
    other = uuid.uuid4()
    assert (True, True, False, True) == (
        service.is_service,
        service.can_act_for(other),
        user.can_act_for(other),
        user.can_act_for(user.user_id),
    )


async def test_cached_keys_work_while_the_jwks_is_down_then_503_after_they_expire(
    verifier: TokenVerifier, jwks_server: JwksServer, clock: Clock
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    token = sign(claims(jwks_server.issuer), key)
    await verifier.verify(token)
    jwks_server.stop()  # the endpoint goes down: nothing listens on its port any more
    clock.now += 599
    assert Role.AUTHENTICATED == (await verifier.verify(token)).role  # still cached
    with pytest.raises(AuthUnavailableError):
        await verifier.verify(sign(claims(jwks_server.issuer), make_ec_key()))  # unknown kid: cannot tell
    clock.now += 2  # past the cache's expiry
    with pytest.raises(AuthUnavailableError) as caught:
        await verifier.verify(token)
    assert caught.value.retry_after is not None
    assert 1 == jwks_server.hits


async def test_a_failing_jwks_endpoint_is_503_not_401(verifier: TokenVerifier, jwks_server: JwksServer) -> None:
    jwks_server.status = 500
    with pytest.raises(AuthUnavailableError):
        await verifier.verify(sign(claims(jwks_server.issuer), make_ec_key()))


def test_the_verifier_repr_shows_no_secret(verifier: TokenVerifier) -> None:
    assert JWT_SECRET not in repr(verifier)
    assert "hs256_secret=set" in repr(verifier)


async def test_the_container_builds_the_verifier_on_its_http_client(
    service_settings: Settings, jwks_server: JwksServer
) -> None:
    key = make_rsa_key()
    jwks_server.keys = [key.jwk]
    container = Container()
    container.settings.override(
        service_settings.model_copy(update={"supabase_url": jwks_server.url, "jwt_secret_key": SecretStr(JWT_SECRET)})
    )
    async with lifespan(container):
        verifier = await resolve(container.token_verifier)
        assert isinstance(verifier, TokenVerifier)
        for signer in (key, JWT_SECRET):
            assert Role.AUTHENTICATED == (await verifier.verify(sign(claims(jwks_server.issuer), signer))).role
    assert 1 == jwks_server.hits


async def test_the_container_refuses_to_build_a_verifier_without_supabase_url(service_settings: Settings) -> None:
    container = Container()
    container.settings.override(service_settings)
    async with lifespan(container):
        with pytest.raises(ConfigError) as caught:
            await resolve(container.token_verifier)
    assert "SUPABASE_URL" in str(caught.value)


async def test_concurrent_requests_on_an_empty_cache_share_one_fetch(
    verifier: TokenVerifier, jwks_server: JwksServer
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    tokens = [sign(claims(jwks_server.issuer), key) for _ in range(20)]
    principals = await asyncio.gather(*(verifier.verify(token) for token in tokens))
    assert 20 == len({principal.user_id for principal in principals})
    assert 1 == jwks_server.hits


async def test_concurrent_requests_after_expiry_during_an_outage_all_get_503(
    verifier: TokenVerifier, jwks_server: JwksServer, clock: Clock
) -> None:
    key = make_ec_key()
    jwks_server.keys = [key.jwk]
    token = sign(claims(jwks_server.issuer), key)
    await verifier.verify(token)
    jwks_server.stop()
    clock.now += 601
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(result, AuthUnavailableError) for result in results)
