"""The queue in front of the Prefect client's connection pool (`QueuedTransport`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from prefect_kubernetes_rs.prefect_api import QueuedTransport, queue_requests_before_the_pool


class CountingTransport(httpx.AsyncBaseTransport):
    """Answers each request after a pause, counting how many it holds at once (a request is
    held until its body is closed, as a pooled connection is)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.inside = 0
        self.most_inside = 0
        self.reached: list[str] = []
        self.fail_first = fail_first

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.reached.append(request.url.path)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise httpx.ConnectError("refused", request=request)
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        await asyncio.sleep(0.01)
        return httpx.Response(200, stream=Body(self, request.url.path.encode()))


class Body(httpx.AsyncByteStream):
    def __init__(self, transport: CountingTransport, content: bytes) -> None:
        self.transport = transport
        self.content = content

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield self.content

    async def aclose(self) -> None:
        self.transport.inside -= 1


async def test_no_more_requests_reach_the_pool_than_it_has_connections_and_all_are_answered() -> (
    None
):
    inner = CountingTransport()
    async with httpx.AsyncClient(
        transport=QueuedTransport(inner, 4), base_url="http://prefect"
    ) as client:
        answers = await asyncio.gather(*(client.get(f"/runs/{n}") for n in range(60)))
    assert [answer.text for answer in answers] == [f"/runs/{n}" for n in range(60)]
    assert inner.most_inside == 4
    assert inner.inside == 0


async def test_a_streamed_response_keeps_its_slot_until_its_body_is_closed() -> None:
    inner = CountingTransport()
    async with httpx.AsyncClient(
        transport=QueuedTransport(inner, 1), base_url="http://prefect"
    ) as client:
        async with client.stream("GET", "/first") as first:
            second = asyncio.ensure_future(client.get("/second"))
            await asyncio.sleep(0.1)
            assert inner.reached == ["/first"], "the second request passed an open body"
            await first.aread()
        assert (await second).text == "/second"
    assert inner.reached == ["/first", "/second"]


async def test_a_failed_request_gives_its_slot_back() -> None:
    inner = CountingTransport(fail_first=3)
    async with httpx.AsyncClient(
        transport=QueuedTransport(inner, 1), base_url="http://prefect"
    ) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("/refused")
        assert (await asyncio.wait_for(client.get("/after"), 5)).text == "/after"


async def test_the_worker_client_queues_as_many_requests_as_prefects_pool_has_connections() -> None:
    async with PrefectClient(api="http://127.0.0.1:9/api") as client:
        queue_requests_before_the_pool(client)
        queue_requests_before_the_pool(client)  # a second call wraps nothing twice
        transport = client._client._transport
        assert isinstance(transport, QueuedTransport)
        assert not isinstance(transport._inner, QueuedTransport)
        # Prefect's own limit (16 connections), read from the pool it built.
        assert transport._limit == transport._inner._pool._max_connections == 16
