"""The client connections of one server process, and what one client may hold of them.

Every socket costs a file descriptor and some memory whether or not it ever asks
anything, so an anonymous client with many sockets (slowloris: half a request head each,
then silence) could take them all. The table caps connections in total and per client
address; when a new one would pass a cap, the oldest connection that is answering
nothing is closed to make room (answering nothing includes a head still arriving), and
only if every one of them is busy is the new one refused. Addresses of trusted proxies
(``SANDBAR_TRUSTED_PROXIES``) carry many clients and have no per-address cap."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Connection(Protocol):
    client_address: bytes

    @property
    def idle(self) -> bool: ...
    def shed(self) -> None: ...
    def tick(self, now: float) -> None: ...


class ConnectionTable:
    def __init__(self, total: int, per_client: int, trusted: Iterable[bytes] = ()) -> None:
        self.total = max(1, total)
        self.per_client = max(1, per_client)
        self._trusted = frozenset(trusted)
        # Insertion-ordered: the oldest first.
        self._all: dict[Connection, None] = {}
        self._by_client: dict[bytes, dict[Connection, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, connection: Connection) -> bool:
        """Take ``connection`` in, closing an older idle one if a cap is reached; False
        when there is no room (the caller closes it)."""
        client = connection.client_address
        mine = self._by_client.get(client)
        full = mine is not None and len(mine) >= self.per_client
        if full and client not in self._trusted and not self._shed_one(mine or {}):
            return False
        if len(self._all) >= self.total and not self._shed_one(self._all):
            return False
        self._all[connection] = None
        self._by_client.setdefault(client, {})[connection] = None
        return True

    def discard(self, connection: Connection) -> None:
        if self._all.pop(connection, 0) is None:
            client = connection.client_address
            mine = self._by_client.get(client)
            if mine is not None:
                mine.pop(connection, None)
                if not mine:
                    del self._by_client[client]

    def all(self) -> list[Connection]:
        return list(self._all)

    def _shed_one(self, among: dict[Connection, None]) -> bool:
        for old in among:
            if old.idle:
                self.discard(old)
                old.shed()
                return True
        return False
