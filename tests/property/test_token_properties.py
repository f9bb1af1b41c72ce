"""Properties: any string offered as an access token is refused with an AuthenticationError, never another error."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.auth import ASYMMETRIC_ALGORITHMS, AuthenticationError, AuthUnavailableError, TokenVerifier
from tests.fixtures.jwks import JWT_SECRET, claims, sign

ISSUER_URL = "http://127.0.0.1:9"
FAST = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def outcome(token: str) -> type[Exception] | str:
    # No HTTP client: a token that would need the JWKS gets AuthUnavailableError without any traffic.
    verifier = TokenVerifier(supabase_url=ISSUER_URL, jwt_secret=JWT_SECRET, http_client=None)
    try:
        return str(asyncio.run(verifier.verify(token)).user_id)
    except (AuthenticationError, AuthUnavailableError) as error:
        return type(error)


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_is_refused(token: str) -> None:
    assert AuthenticationError is outcome(token)


@FAST
@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku"]), JSON, max_size=5),
    payload=JSON,
    signature=st.binary(max_size=80),
)
def test_arbitrary_jwt_shaped_tokens_are_refused(header: dict[str, Any], payload: Any, signature: bytes) -> None:
    token = f"{b64(header)}.{b64(payload)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    result = outcome(token)
    assert result in {AuthenticationError, AuthUnavailableError}
    if result is AuthUnavailableError:
        assert header.get("alg") in ASYMMETRIC_ALGORITHMS  # only a token that needs the JWKS can wait for it


@FAST
@given(
    changes=st.dictionaries(
        st.sampled_from(["sub", "role", "aud", "iss", "exp", "nbf", "iat", "email", "aal", "amr", "is_anonymous"]),
        JSON,
        max_size=3,
    )
)
def test_a_validly_signed_token_with_arbitrary_claims_gives_a_principal_or_a_refusal(changes: dict[str, Any]) -> None:
    """Signed with the real secret: the claims alone decide, and every bad one is an AuthenticationError."""
    try:
        token = sign(claims(f"{ISSUER_URL}/auth/v1", **changes), JWT_SECRET)
    except (TypeError, ValueError):
        return  # PyJWT refuses to encode it (e.g. a non-numeric exp): nothing to verify
    result = outcome(token)
    assert result is AuthenticationError or isinstance(result, str)
