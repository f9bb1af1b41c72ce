"""Clip generation: a Replicate prediction per scene as a fan-out of stage items, then one composition.

    $ python -m shared worker examples.clips --concurrency 4       # on every machine, as many as you like
    await StageQueue(db).submit(job_id, "clip_generation", items=scenes(prompts), then="composition")

Each clip is a paid call admitted under the job's budget and the provider's limits shared by all workers; its
prediction id is checkpointed before it is awaited (a re-run resumes it, never pays twice); its cost is priced
from the prediction's ``metrics.predict_time``. A 429/503 is retried by the engine; a spent budget fails the job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from dependency_injector import providers
from pydantic_settings import SettingsConfigDict

from shared.config import ModuleSettings, Settings
from shared.container import Container
from shared.errors import ValidationError
from shared.stages import StageContext, Stages

__all__ = ["ClipContainer", "ClipSettings", "scenes", "stages"]

MODEL = "anotherjesse/zeroscope-v2-xl"
ESTIMATE = {"predict_time_seconds": 60}  # the most one clip may run: what its reservation holds


class ClipSettings(ModuleSettings):
    """Where Replicate is (``CLIPS_REPLICATE_URL``) and how often a prediction is polled."""

    model_config = SettingsConfigDict(env_prefix="CLIPS_")
    replicate_url: str = "https://api.replicate.com/v1"
    poll_seconds: float = 1.0


async def replicate_client(settings: Settings, clips: ClipSettings) -> AsyncIterator[httpx.AsyncClient]:
    """Open the HTTP client with the API token (REPLICATE_API_TOKEN); closed when the worker stops."""
    token = settings.replicate_api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    async with httpx.AsyncClient(base_url=clips.replicate_url, headers=headers, timeout=30) as client:
        yield client


class ClipContainer(Container):  # every shared provider, plus the module's settings and Replicate client
    clip_settings = providers.Singleton(ClipSettings)
    replicate = providers.Resource(replicate_client, settings=Container.settings, clips=clip_settings)


stages = Stages(container=ClipContainer)  # each worker builds one and hands it to handlers as ctx.container


def scenes(prompts: list[str]) -> dict[str, dict[str, Any]]:
    """Return the fan-out's items, one per clip: ``{"0": {"prompt": ..., "of": 30}, ...}``."""
    return {str(n): {"prompt": prompt, "of": len(prompts)} for n, prompt in enumerate(prompts)}


async def finished(replicate: httpx.AsyncClient, prediction_id: str, every: float) -> dict[str, Any]:
    """Poll the prediction until it ends; a 429/503 here leaves the admission as a RetryableError."""
    while True:
        prediction: dict[str, Any] = (await replicate.get(f"/predictions/{prediction_id}")).raise_for_status().json()
        if prediction["status"] in ("succeeded", "failed", "canceled"):
            return prediction
        await asyncio.sleep(every)


@stages.handler("clip_generation", max_attempts=10)
async def clip(ctx: StageContext) -> dict[str, Any]:
    replicate: httpx.AsyncClient = ctx.container.replicate()

    async def create() -> str:  # the only call that pays; its id is kept before anything waits on it
        answer = await replicate.post(f"/models/{MODEL}/predictions", json={"input": {"prompt": ctx.payload["prompt"]}})
        return str(answer.raise_for_status().json()["id"])

    async with ctx.paid.admit(provider="replicate", model=MODEL, estimate=ESTIMATE, name="clip") as call:
        prediction_id = await ctx.checkpoint("prediction", create)
        prediction = await finished(replicate, prediction_id, ctx.container.clip_settings().poll_seconds)
        await call.settle_replicate(prediction)  # metrics.predict_time x the GPU's price: billed even if it failed
    if prediction["status"] != "succeeded":
        raise ValidationError(f"Replicate could not make clip {ctx.item}: {prediction.get('error')}; change its prompt")
    video = (await replicate.get(prediction["output"])).raise_for_status().content
    path = f"{ctx.job_id}/{ctx.item}.mp4"  # the same on every attempt: a re-run overwrites it, never adds one
    url = await ctx.container.storage().upload_file("clips", path, video, upsert=True)
    await ctx.progress(90 * (len(await ctx.results("clip_generation")) + 1) // ctx.payload["of"])
    return {"url": url, "prediction": prediction_id}


@stages.handler("composition")
async def compose(ctx: StageContext) -> dict[str, Any]:
    clips = await ctx.results("clip_generation")  # all of them: the engine queues this once, after the last
    edit = json.dumps({"clips": [clips[n]["url"] for n in sorted(clips, key=int)]}).encode()  # the "video"
    url = await ctx.container.storage().upload_file("videos", f"{ctx.job_id}/final.json", edit, upsert=True)
    await ctx.container.jobs().complete_job(ctx.job_id, url)
    return {"video": url, "clips": len(clips)}
