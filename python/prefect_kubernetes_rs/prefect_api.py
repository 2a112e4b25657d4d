"""The worker's Prefect client: patient with the requests a run cannot do without, and queued
in front of its connection pool (`QueuedTransport`), whose bookkeeping grows with its queue.

Under a burst (hundreds of runs released at once against a SQLite-backed server) Prefect's API
answers `503 Service Unavailable` for a while, and Prefect's client gives up after its own few
retries (about a minute). A run whose Pending proposal or pid write was lost that way was never
submitted, or cannot be cancelled or followed again after a restart. A 503 or a refused
connection means the request was not applied, so asking again is safe: state proposals (Pending
and Crashed among them) and flow-run updates (the pid) are asked again after longer pauses.
Anything else (a timeout, a lost answer) may have been applied
and goes to the caller as before: a second Pending would be aborted by the server and leave the
run unsubmitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import httpx

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import State

# Pauses before a request Prefect did not apply is asked again (the client has already retried
# it itself before each of these).
UNAVAILABLE_RETRY_PAUSES_SECONDS = (5.0, 15.0, 30.0)

_T = TypeVar("_T")


def was_not_applied(error: Exception) -> bool:
    """Prefect's API answered 503 or refused the connection."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code == 503
    return isinstance(error, httpx.ConnectError)


class PatientPrefectClient:
    """A `PrefectClient` whose flow-run state proposals and flow-run updates are asked again
    while Prefect's API is unavailable; every other attribute is the client's own."""

    def __init__(self, client: PrefectClient, logger: logging.Logger | logging.LoggerAdapter[Any]):
        self._client = client
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def set_flow_run_state(
        self, flow_run_id: UUID, state: State[Any], force: bool = False
    ) -> Any:
        return await self._patiently(
            f"proposing {state.name} for flow run {flow_run_id}",
            lambda: self._client.set_flow_run_state(flow_run_id, state, force=force),
        )

    async def update_flow_run(self, flow_run_id: UUID, **changes: Any) -> Any:
        what = ", ".join(sorted(changes)) or "nothing"
        return await self._patiently(
            f"writing {what} of flow run {flow_run_id}",
            lambda: self._client.update_flow_run(flow_run_id, **changes),
        )

    async def _patiently(self, what: str, ask: Callable[[], Awaitable[_T]]) -> _T:
        for pause in UNAVAILABLE_RETRY_PAUSES_SECONDS:
            try:
                return await ask()
            except (httpx.HTTPStatusError, httpx.ConnectError) as error:
                if not was_not_applied(error):
                    raise
                self._logger.warning(
                    "Prefect's API is unavailable (%s); %s again in %g s", error, what, pause
                )
            await asyncio.sleep(pause)
        return await ask()


# Prefect's client opens at most this many connections to its API (its `httpx.Limits`); the
# queue below lets in as many requests as the pool has connections when the pool does not say.
PREFECT_CLIENT_CONNECTIONS = 16


class QueuedTransport(httpx.AsyncBaseTransport):
    """Lets at most `limit` requests into the wrapped transport at once; the others wait here,
    in the order they came.

    Why: httpcore's connection pool examines every request waiting in it against every
    connection each time a connection is released. With a thousand runs released at once the
    base worker queues thousands of requests there (deployment and flow reads, state proposals,
    label updates), and that bookkeeping, O(waiting x connections) per request, became the
    worker's largest CPU cost. Waiting on a semaphore costs O(1). A request keeps its slot
    until its response body is closed, as it keeps its connection.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots, self._loop = asyncio.Semaphore(self._limit), loop
        if loop is not self._loop:
            # A semaphore belongs to one event loop; a request from another goes straight on.
            return await self._inner.handle_async_request(request)
        slots = self._slots
        await slots.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            slots.release()
            raise
        response.stream = _ReleasingStream(response.stream, slots.release)
        return response

    async def __aenter__(self) -> QueuedTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._inner.__aexit__(*exc_info)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its request's slot back once, when it is closed."""

    def __init__(self, stream: Any, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def queue_requests_before_the_pool(client: PrefectClient) -> None:
    """Put a `QueuedTransport` in front of the client's connection pool (see its docstring)."""
    http = client._client
    pool = getattr(http._transport, "_pool", None)
    limit = getattr(pool, "_max_connections", None) or PREFECT_CLIENT_CONNECTIONS
    if not isinstance(http._transport, QueuedTransport):
        http._transport = QueuedTransport(http._transport, limit)
