"""Fast checks of the addon's per-client bounds, with a fake engine hook for closing."""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import connection

from cowork.host.egress.addon import GateAddon, Limits


class NoServices:
    async def grants(self) -> list[Any]:
        raise AssertionError("not used")

    async def resolve(self, host: str, port: int) -> list[str]:
        raise AssertionError("not used")

    async def address_allowed(self, address: str) -> bool:
        raise AssertionError("not used")

    async def secret(self, credential_id: str) -> str:
        raise AssertionError("not used")

    async def emit(self, kind: str, fields: dict[str, Any]) -> None:
        return None


def new_client() -> connection.Client:
    return connection.Client(
        peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=time.time()
    )


def make(limits: Limits) -> tuple[GateAddon, list[str]]:
    closed: list[str] = []

    def close(cid: str) -> bool:
        closed.append(cid)
        return True

    addon = GateAddon(NoServices(), token="t", websockets=False, limits=limits, close_client=close)
    return addon, closed


def test_oldest_waiting_connections_are_evicted_never_the_newest() -> None:
    addon, closed = make(Limits(max_pending=3))
    clients = [new_client() for _ in range(6)]
    for c in clients:
        addon.client_connected(c)
    assert closed == [c.id for c in clients[:3]]
    assert not clients[-1].error


def test_authenticated_clients_are_not_evicted_by_waiting_ones() -> None:
    addon, closed = make(Limits(max_pending=2))
    good = new_client()
    addon.client_connected(good)
    assert addon._mark_authed(good)
    for _ in range(10):
        addon.client_connected(new_client())
    assert good.id not in closed


def test_sweep_closes_late_authentication_and_retries_until_gone() -> None:
    addon, closed = make(Limits(auth_timeout=1.0))
    slow = new_client()
    addon.client_connected(slow)
    addon.sweep(now=time.monotonic() + 5)
    assert closed == [slow.id]
    addon.sweep(now=time.monotonic() + 6)  # still not reported gone: closed again
    assert closed == [slow.id, slow.id]
    addon.client_disconnected(slow)
    addon.sweep(now=time.monotonic() + 7)
    assert closed == [slow.id, slow.id]


def test_client_limit_refuses_more_authenticated_connections() -> None:
    addon, _ = make(Limits(max_clients=2))
    clients = [new_client() for _ in range(3)]
    for c in clients:
        addon.client_connected(c)
    assert addon._mark_authed(clients[0]) and addon._mark_authed(clients[1])
    assert not addon._mark_authed(clients[2])
