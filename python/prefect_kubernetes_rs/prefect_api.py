"""The worker's Prefect client, patient with the requests a run cannot do without.

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
