"""The stage worker's group commit: requests made while a statement is in flight go out together."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import DatabaseError
from shared.stages import _Coalesced


async def test_an_idle_request_goes_alone_and_the_ones_behind_a_statement_go_together() -> None:
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(batch: list[int]) -> list[int]:
        sent.append(batch)
        if len(sent) == 1:
            await gate.wait()
        return [n * 10 for n in batch]

    coalesced: _Coalesced[int, int] = _Coalesced(send)
    first = asyncio.create_task(coalesced(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalesced(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert [10, 20, 30, 40] == await asyncio.gather(first, *rest)
    assert [[1], [2, 3, 4]] == sent


async def test_a_failed_statement_fails_its_whole_batch_and_the_next_batch_still_goes() -> None:
    calls = 0

    async def send(batch: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise DatabaseError("the statement was refused")
        return [item.upper() for item in batch]

    coalesced: _Coalesced[str, str] = _Coalesced(send)
    failed = await asyncio.gather(coalesced("a"), coalesced("b"), return_exceptions=True)
    assert all(isinstance(error, DatabaseError) for error in failed)
    assert "C" == await coalesced("c")


async def test_a_request_whose_caller_left_does_not_stop_the_others() -> None:
    gate = asyncio.Event()

    async def send(batch: list[int]) -> list[int]:
        await gate.wait()
        return batch

    coalesced: _Coalesced[int, int] = _Coalesced(send)
    left = asyncio.create_task(coalesced(1))
    stays = asyncio.create_task(coalesced(2))
    await asyncio.sleep(0)
    left.cancel()
    gate.set()
    assert 2 == await stays
    with pytest.raises(asyncio.CancelledError):
        await left
