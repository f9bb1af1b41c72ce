"""Costs from reported usage match the catalogue's own figures exactly; what it cannot price is refused."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from shared.errors import ConfigError
from shared.paid import PriceCatalogue, ReplicatePrices, UnknownPriceError

CATALOGUE = PriceCatalogue()
TABLE = json.loads(resources.files("shared.paid").joinpath("data/replicate_prices.json").read_text())


def chat(
    model: str, prompt: int, completion: int, *, cached: int = 0, audio_in: int = 0, audio_out: int = 0
) -> dict[str, Any]:
    """An OpenAI Chat Completions answer as the API sends it."""
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_out},
        },
    }


def responses(model: str, inp: int, out: int, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI Responses API answer."""
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "model": model,
        "status": "completed",
        "usage": {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": inp + out,
        },
    }


def image(text: int, image_in: int, out: int) -> dict[str, Any]:
    """An OpenAI Images API answer (gpt-image-1 family): the body names no model."""
    return {
        "created": 1713833628,
        "data": [{"b64_json": "iVBORw0KGgo="}],
        "usage": {
            "total_tokens": text + image_in + out,
            "input_tokens": text + image_in,
            "output_tokens": out,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        },
    }


def prediction(model: str, predict_time: float) -> dict[str, Any]:
    """A finished Replicate prediction as predictions.get returns it."""
    return {
        "id": "gm3qorzdhgbfurvjtvhg6dckhu",
        "model": model,
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "status": "succeeded",
        "metrics": {"predict_time": predict_time, "total_time": predict_time + 1.2},
    }


def genai(model: str, **usage: int) -> Decimal:
    """The catalogue's own figure: genai-prices called directly."""
    return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id="openai").total_price


OPENAI_CASES = [
    (
        "chat",
        None,
        chat("gpt-4o-mini-2024-07-18", 1000, 500),
        genai("gpt-4o-mini", input_tokens=1000, output_tokens=500),
    ),
    (
        "chat",
        None,
        chat("gpt-4o-mini", 1200, 300, cached=1024),
        genai("gpt-4o-mini", input_tokens=1200, output_tokens=300, cache_read_tokens=1024),
    ),
    ("chat", None, chat("gpt-4o-2024-08-06", 2500, 800), genai("gpt-4o", input_tokens=2500, output_tokens=800)),
    (
        "chat",
        None,
        chat("gpt-4.1", 10_000, 2_000, cached=4096),
        genai("gpt-4.1", input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4096),
    ),
    ("chat", None, chat("gpt-4.1-mini", 700, 90), genai("gpt-4.1-mini", input_tokens=700, output_tokens=90)),
    ("chat", None, chat("gpt-4.1-nano", 50_000, 1), genai("gpt-4.1-nano", input_tokens=50_000, output_tokens=1)),
    ("chat", None, chat("o3-mini", 3000, 6000), genai("o3-mini", input_tokens=3000, output_tokens=6000)),
    (
        "responses",
        None,
        responses("gpt-4.1", 100, 50),
        genai("gpt-4.1", input_tokens=100, output_tokens=50, cache_read_tokens=0),
    ),
    (
        "responses",
        None,
        responses("gpt-5", 4000, 9000, cached=2048, reasoning=7000),
        genai("gpt-5", input_tokens=4000, output_tokens=9000, cache_read_tokens=2048),
    ),
    (
        "responses",
        None,
        responses("gpt-5-mini", 1, 1),
        genai("gpt-5-mini", input_tokens=1, output_tokens=1, cache_read_tokens=0),
    ),
    (
        "images",
        "gpt-image-1",
        image(50, 0, 4160),
        genai("gpt-image-1", input_tokens=50, output_tokens=4160, input_text_tokens=50, input_image_tokens=0),
    ),
    (
        "images",
        "gpt-image-1",
        image(120, 1290, 1056),
        genai("gpt-image-1", input_tokens=1410, output_tokens=1056, input_text_tokens=120, input_image_tokens=1290),
    ),
    (
        "images",
        "gpt-image-1-mini",
        image(30, 0, 272),
        genai("gpt-image-1-mini", input_tokens=30, output_tokens=272, input_text_tokens=30, input_image_tokens=0),
    ),
    (
        "images",
        "gpt-image-1.5",
        image(80, 323, 1584),
        genai("gpt-image-1.5", input_tokens=403, output_tokens=1584, input_text_tokens=80, input_image_tokens=323),
    ),
    (
        "chat",
        None,
        chat("gpt-4o-audio-preview", 900, 1400, audio_in=600, audio_out=1200),
        genai(
            "gpt-4o-audio-preview",
            input_tokens=900,
            output_tokens=1400,
            input_audio_tokens=600,
            output_audio_tokens=1200,
            cache_read_tokens=0,
        ),
    ),
    (
        "chat",
        None,
        chat("gpt-audio", 2000, 3000, audio_in=1500, audio_out=2800),
        genai(
            "gpt-audio",
            input_tokens=2000,
            output_tokens=3000,
            input_audio_tokens=1500,
            output_audio_tokens=2800,
            cache_read_tokens=0,
        ),
    ),
]

TOKEN_CASES = [
    # Audio models whose answers carry token counts (transcription, speech): priced from the counts directly.
    ("gpt-4o-transcribe", {"input_tokens": 1500, "input_audio_tokens": 1400, "output_tokens": 220}),
    ("gpt-4o-mini-transcribe", {"input_tokens": 800, "input_audio_tokens": 780, "output_tokens": 100}),
    ("gpt-4o-mini-tts", {"input_tokens": 120, "output_tokens": 2400}),
]

REPLICATE_CASES = [
    ("stability-ai/sdxl", 2.345),
    ("meta/musicgen", 41.07),
    ("lucataco/animate-diff", 58.331),
    ("anotherjesse/zeroscope-v2-xl", 93.5),
    ("stability-ai/stable-video-diffusion", 127.0042),
    ("openai/whisper", 9.8),
    ("nightmareai/real-esrgan", 0.734),
]


def test_the_table_has_at_least_twenty_real_payloads() -> None:
    assert len(OPENAI_CASES) + len(TOKEN_CASES) + len(REPLICATE_CASES) >= 20


@pytest.mark.parametrize(("flavor", "model", "payload", "expected"), OPENAI_CASES)
def test_openai_answers_cost_the_catalogues_own_figure(
    flavor: Any, model: str | None, payload: dict[str, Any], expected: Decimal
) -> None:
    priced = CATALOGUE.price_openai(payload, flavor=flavor, model=model)
    assert expected == priced.cost
    assert expected > 0
    assert f"genai-prices {genai_prices.__version__}" == priced.price_version


@pytest.mark.parametrize(("model", "usage"), TOKEN_CASES)
def test_audio_token_counts_cost_the_catalogues_own_figure(model: str, usage: dict[str, int]) -> None:
    priced = CATALOGUE.price("openai", model, usage)
    assert genai(model, **usage) == priced.cost
    assert {name: Decimal(value) for name, value in usage.items()} == dict(priced.units)


@pytest.mark.parametrize(("model", "seconds"), REPLICATE_CASES)
def test_replicate_predictions_cost_predict_time_times_the_hardware_price(model: str, seconds: float) -> None:
    priced = CATALOGUE.price_replicate(prediction(model, seconds))
    hardware = TABLE["models"][model]
    expected = Decimal(str(seconds)) * Decimal(TABLE["hardware"][hardware])
    assert expected == priced.cost
    assert TABLE["version"] == priced.price_version
    assert {f"{hardware}_per_second": Decimal(TABLE["hardware"][hardware])} == dict(priced.unit_prices)


def test_a_known_price_by_hand() -> None:
    """gpt-4o-mini at $0.15 and $0.60 per million tokens: 1000 in and 500 out cost $0.00045."""
    assert (
        Decimal("0.00045")
        == CATALOGUE.price("openai", "gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500}).cost
    )
    assert (
        Decimal("0.0014")
        == CATALOGUE.price("replicate", "x/y", {"predict_time_seconds": 1}, hardware="gpu-a100-large").cost
    )


@pytest.mark.parametrize(
    ("provider", "model", "usage"),
    [
        ("openai", "gpt-9-ultra", {"input_tokens": 10}),
        ("nobody", "gpt-4o", {"input_tokens": 10}),
        ("openai", "gpt-4o", {"sparkle_tokens": 10}),
        ("replicate", "someone/unknown-model", {"predict_time_seconds": 3}),
        ("replicate", "stability-ai/sdxl", {"input_tokens": 3}),
        ("openai", "gpt-4o", {"input_tokens": -1}),
    ],
)
def test_what_the_catalogue_cannot_price_is_refused_never_zero(
    provider: str, model: str, usage: dict[str, int]
) -> None:
    with pytest.raises(UnknownPriceError):
        CATALOGUE.price(provider, model, usage)


def test_a_prediction_without_predict_time_is_refused() -> None:
    """replicate.run() drops the metrics: pricing it would be a guess."""
    with pytest.raises(UnknownPriceError, match="predict_time"):
        CATALOGUE.price_replicate({"model": "stability-ai/sdxl", "status": "succeeded", "metrics": {}})


def test_an_answer_without_usage_is_refused() -> None:
    with pytest.raises(UnknownPriceError):
        CATALOGUE.price_openai({"model": "gpt-4o", "choices": []}, flavor="chat")


def test_a_deployment_overrides_the_replicate_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"version": "ours-2027-01", "hardware": {"gpu-l40s": "0.002"}, "models": {"a/b": "gpu-l40s"}})
    )
    priced = PriceCatalogue(ReplicatePrices.load(path)).price_replicate(prediction("a/b", 10))
    assert (Decimal("0.020"), "ours-2027-01") == (priced.cost, priced.price_version)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        json.dumps({"version": "v"}),
        json.dumps({"version": "v", "hardware": {"x": "free"}}),
        json.dumps({"version": "v", "hardware": {"x": "1"}, "models": {"a/b": "y"}}),
    ],
)
def test_a_broken_price_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        ReplicatePrices.load(path)


def test_the_usage_metadata_holds_every_figure_as_a_string() -> None:
    meta = CATALOGUE.price("openai", "gpt-4o-mini", {"input_tokens": 1000, "output_tokens": 500}).metadata()
    assert {"provider", "model", "units", "unit_prices", "cost", "price_version"} == set(meta)
    assert "0.00045" == meta["cost"]
    assert {"input_tokens": "1000", "output_tokens": "500"} == meta["units"]
