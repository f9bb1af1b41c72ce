"""Price a paid call from the usage its provider reports, never from a number the caller types in.

Two sources, one answer (:class:`PricedUsage`: provider, model, units, unit prices, cost, price version):

- LLM, image and audio tokens of OpenAI (and every provider genai-prices knows) are priced by genai-prices,
  exact ``Decimal``; the price version is genai-prices' own version, so a row says which table priced it.
- A Replicate prediction is ``metrics.predict_time`` seconds x its hardware's price per second, from a versioned
  table the package ships (``shared/paid/data/replicate_prices.json``); a deployment points
  ``PAID_REPLICATE_PRICES_FILE`` at its own copy (same shape) to follow Replicate's price changes.

An unknown provider, model, hardware or usage unit, and a prediction without ``predict_time`` (``replicate.run()``
drops it), are refused with :class:`~shared.paid.errors.UnknownPriceError`: a call is never priced at 0.
Estimates for a budget reservation come from the same catalogue (:meth:`PriceCatalogue.estimate`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from shared.errors import ConfigError
from shared.paid.errors import UnknownPriceError

__all__ = ["PriceCatalogue", "PricedUsage", "ReplicatePrices", "Usage"]

Usage = Mapping[str, int | float | Decimal]
OpenAIFlavor = Literal["chat", "responses", "images", "embeddings", "realtime"]
_REPLICATE = "replicate"
_PREDICT_TIME = "predict_time_seconds"


def _decimal(value: object, *, what: str) -> Decimal:
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)  # type: ignore[arg-type]  # checked
    except (InvalidOperation, TypeError, ValueError):
        msg = f"{what} must be a number, got {type(value).__name__}"
        raise UnknownPriceError(msg, unit=what) from None
    if not number.is_finite() or number < 0:
        raise UnknownPriceError(f"{what} must be a finite number >= 0", unit=what)
    return number


@dataclass(frozen=True, slots=True)
class PricedUsage:
    """What one call cost, and the figures that priced it (recorded with the ledger row)."""

    provider: str
    model: str
    units: Mapping[str, Decimal]
    unit_prices: Mapping[str, Decimal]
    cost: Decimal
    price_version: str
    tokens: int = 0

    def metadata(self) -> dict[str, Any]:
        """Return the row's ``usage`` jsonb: every figure as a string, so no float ever touches money."""
        return {
            "provider": self.provider,
            "model": self.model,
            "units": {name: str(value) for name, value in self.units.items()},
            "unit_prices": {name: str(value) for name, value in self.unit_prices.items()},
            "cost": str(self.cost),
            "price_version": self.price_version,
        }


@dataclass(frozen=True, slots=True)
class ReplicatePrices:
    """Replicate's hardware prices (USD per second) and which hardware each model runs on, under one version."""

    version: str
    hardware: Mapping[str, Decimal]
    models: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> ReplicatePrices:
        """Read the table from ``path``, or the one the package ships.

        Raises:
            ConfigError: the file is missing or not the expected shape.
        """
        where = str(path) if path is not None else "the packaged replicate_prices.json"
        try:
            if path is None:
                text = resources.files("shared.paid").joinpath("data/replicate_prices.json").read_text("utf-8")
            else:
                text = path.read_text("utf-8")
            raw = json.loads(text)
            hardware = {str(name): _decimal(price, what=f"hardware {name}") for name, price in raw["hardware"].items()}
            table = cls(str(raw["version"]), hardware, {str(k): str(v) for k, v in raw.get("models", {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnknownPriceError) as exc:
            msg = f"PAID_REPLICATE_PRICES_FILE: cannot read {where} ({type(exc).__name__}); fix the file"
            raise ConfigError(problems=(msg,)) from exc
        unknown = sorted(set(table.models.values()) - set(hardware))
        if unknown:
            msg = f"PAID_REPLICATE_PRICES_FILE: models name unknown hardware {', '.join(unknown)} in {where}"
            raise ConfigError(problems=(msg,))
        return table


class PriceCatalogue:
    """Prices from genai-prices (tokens) and the Replicate hardware table (seconds); refuses what it cannot price."""

    def __init__(self, replicate: ReplicatePrices | None = None) -> None:
        self._replicate = replicate

    @cached_property
    def replicate(self) -> ReplicatePrices:
        """Return the Replicate table (the packaged one unless one was given)."""
        return self._replicate if self._replicate is not None else ReplicatePrices.load()

    @cached_property
    def token_version(self) -> str:
        """Return the version of the token price table (genai-prices' own)."""
        import genai_prices  # noqa: PLC0415 - 0.16 s to import: loaded when first priced

        return f"genai-prices {genai_prices.__version__}"

    def price(self, provider: str, model: str, usage: Usage, *, hardware: str | None = None) -> PricedUsage:
        """Return the cost of ``usage`` (genai-prices' usage keys, or ``predict_time_seconds`` for Replicate)."""
        if provider == _REPLICATE:
            if set(usage) != {_PREDICT_TIME}:
                extra = ", ".join(sorted(set(usage) - {_PREDICT_TIME})) or _PREDICT_TIME
                raise UnknownPriceError(provider=provider, model=model, unit=extra)
            return self.price_seconds(model, usage[_PREDICT_TIME], hardware=hardware)
        return self.price_tokens(provider, model, usage)

    def price_tokens(self, provider: str, model: str, usage: Usage) -> PricedUsage:
        """Price token (or character, second...) counts with genai-prices; unknown keys and models are refused."""
        from genai_prices import Usage as GenaiUsage  # noqa: PLC0415 - loaded when first priced
        from genai_prices import calc_price  # noqa: PLC0415

        units = {name: _decimal(count, what=name) for name, count in usage.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            counts = GenaiUsage(**{name: int(value) if value == int(value) else value for name, value in units.items()})
        for warning in caught:
            unit = str(warning.message).rpartition(": ")[2]
            raise UnknownPriceError(provider=provider, model=model, unit=unit)
        try:
            calculation = calc_price(counts, model, provider_id=provider)
        except (LookupError, ValueError) as exc:
            raise UnknownPriceError(provider=provider, model=model) from exc
        prices = {
            key: value.base if hasattr(value, "base") else value
            for key, value in vars(calculation.model_price).items()
            if not key.startswith("_") and value is not None
        }
        tokens = int(sum(value for name, value in units.items() if name in {"input_tokens", "output_tokens"}))
        return PricedUsage(
            provider, calculation.model.id, units, prices, calculation.total_price, self.token_version, tokens
        )

    def price_openai(
        self, payload: Mapping[str, Any], *, flavor: OpenAIFlavor = "chat", model: str | None = None
    ) -> PricedUsage:
        """Price an OpenAI answer (the JSON body, or ``response.model_dump()``) from its own ``usage``.

        ``model`` is needed where the body names none (the Images API's answers).
        """
        from genai_prices import extract_usage  # noqa: PLC0415 - loaded when first priced

        try:
            extracted = extract_usage(payload, provider_id="openai", api_flavor=flavor)
        except (LookupError, ValueError, TypeError) as exc:
            what = model or str(payload.get("model", "?"))
            raise UnknownPriceError(
                f"the OpenAI answer carries no usage this catalogue can read ({type(exc).__name__}); "
                "pass the whole JSON body and the right flavor",
                provider="openai",
                model=what,
            ) from exc
        name = model or (extracted.model.id if extracted.model is not None else payload.get("model"))
        if not name:
            raise UnknownPriceError("the answer names no model; pass model=", provider="openai", model="?")
        reported = {key: value for key, value in vars(extracted.usage).items() if not key.startswith("_")}
        values = getattr(extracted.usage, "_reported_values", None)
        if callable(values):
            reported = dict(values())
        return self.price_tokens("openai", str(name), reported)

    def price_seconds(self, model: str, seconds: object, *, hardware: str | None = None) -> PricedUsage:
        """Price ``seconds`` of predict time on the model's hardware (or ``hardware`` given here)."""
        table = self.replicate
        sku = hardware or table.models.get(model.split(":", 1)[0])
        if sku is None or sku not in table.hardware:
            raise UnknownPriceError(provider=_REPLICATE, model=model, unit=sku)
        time = _decimal(seconds, what=_PREDICT_TIME)
        price = table.hardware[sku]
        return PricedUsage(
            _REPLICATE, model, {_PREDICT_TIME: time}, {f"{sku}_per_second": price}, time * price, table.version
        )

    def price_replicate(self, prediction: Mapping[str, Any], *, hardware: str | None = None) -> PricedUsage:
        """Price a Replicate prediction (its JSON, or ``prediction.dict()``) from ``metrics.predict_time``."""
        model = str(prediction.get("model") or prediction.get("version") or "?")
        metrics = prediction.get("metrics") or {}
        if prediction.get("status") not in (None, "succeeded", "failed", "canceled") or "predict_time" not in metrics:
            msg = (
                f"the Replicate prediction of {model} reports no metrics.predict_time (replicate.run() drops it); "
                "price the finished prediction object (predictions.create + wait)"
            )
            raise UnknownPriceError(msg, provider=_REPLICATE, model=model, unit=_PREDICT_TIME)
        return self.price_seconds(model, metrics["predict_time"], hardware=hardware)

    def estimate(self, provider: str, model: str, usage: Usage, *, hardware: str | None = None) -> Decimal:
        """Return what ``usage`` (the most the call may use) would cost: a reservation's estimate."""
        return self.price(provider, model, usage, hardware=hardware).cost
