"""to_money over the whole input space: every amount is a ValidationError or the right Decimal, nothing else."""

from __future__ import annotations

import decimal
import math
from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.cost_tracking import to_money
from shared.errors import ValidationError

MAX = Decimal("99999999.9999")
WIDE = decimal.Context(prec=100_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])

decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.builds(
    lambda digits, exponent, sign: Decimal((sign, digits, exponent)),
    st.tuples(*[st.integers(0, 9)] * 3) | st.lists(st.integers(0, 9), min_size=1, max_size=40).map(tuple),
    st.integers(-(10**9), 10**9),
    st.integers(0, 1),
)
amounts = (
    decimals
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | decimals.map(str)
    | st.integers().map(str)
    | st.floats().map(repr)
)


def expected(value: object) -> Decimal | None:
    """The money ``value`` should become, computed exactly with unbounded precision, or None for a refusal."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str | float):
        return None
    with decimal.localcontext(WIDE):  # the constructor is exact; without traps a bad string is NaN
        exact = Decimal(repr(value) if isinstance(value, float) else value)
    if not exact.is_finite() or (exact.is_signed() and exact != 0) or exact > MAX:
        return None
    with decimal.localcontext(WIDE):
        money = exact.quantize(Decimal("0.0001"), rounding=ROUND_CEILING)
    return None if money > MAX else abs(money)


@given(amounts)
@example(Decimal("1E+30"))
@example("1e28")
@example(10**30)
@example(Decimal("99999999.99991"))
@example(Decimal("-0"))
@example(Decimal("1E-999999999"))
@example(Decimal("sNaN"))
@example("  2.5 ")
@example(float("nan"))
@example(-0.0)
@example(1e300)
def test_an_amount_is_refused_or_exact(value: object) -> None:
    want = expected(value)
    if want is None:
        with pytest.raises(ValidationError) as caught:
            to_money(value, field="cost")
        assert "cost" == caught.value.field
        return
    money = to_money(value, field="cost")
    assert want == money
    assert -4 == money.as_tuple().exponent
    assert not money.is_signed()


@given(st.decimals(min_value=0, max_value=MAX, places=4))
def test_money_already_at_four_places_is_kept_as_it_is(value: Decimal) -> None:
    assert value == to_money(value)


@given(st.decimals(min_value=0, max_value=MAX - 1, allow_nan=False))
def test_rounding_is_up_and_by_less_than_a_ten_thousandth(value: Decimal) -> None:
    money = to_money(value)
    assert value <= money < WIDE.add(value, Decimal("0.0001"))


@given(st.floats(min_value=0, max_value=1e8 - 1))
def test_a_float_is_read_through_its_shortest_repr(value: float) -> None:
    assert to_money(repr(value)) == to_money(value)
    assert math.isclose(float(to_money(value)), value, abs_tol=1e-4)


@pytest.mark.parametrize("value", [True, False, None, [1], {"a": 1}, b"1", 1j, object()])
def test_what_is_not_a_number_type_is_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="Decimal, int, str or float"):
        to_money(value, field="limit")


def test_a_thread_context_without_traps_changes_nothing() -> None:
    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = False
        context.prec = 3
        assert Decimal("12345.6789") == to_money("12345.6789")
        with pytest.raises(ValidationError):
            to_money("not a number")


def test_a_long_refused_value_is_quoted_short() -> None:
    with pytest.raises(ValidationError) as caught:
        to_money("9" * 10_000)
    assert len(caught.value.message) < 200
