"""The lease policy of the Anthropic proxy's request counting: how many requests a process
counts ahead of need, when it hands them out without a statement, and when it gives them
back. No SQL and no clock of its own (``now`` is passed in), so the policy is tested alone
(tests/test_lease_policy.py); infrastructure/usage.py runs the statements it asks for.

A workspace that keeps asking is counted ahead: each reservation asks for as many
requests as wait and enough more that this process holds some ahead of need (twice as
many as the last time, up to ``MAX_AHEAD``), and hands them out without a statement
(``take``) while nothing has changed (the change feed's generation: a new limit, say),
the tokens it knows of are under the limit, and the day is the same. The tokens it knows
of are the day's total as every statement of its own returns it (reservations, and each
batch of records: other processes' tokens show within a batch) plus its own since. Once
half of a lease is handed out, it asks for more without waiting (so that under steady
load no request waits for a statement), unless the last reservation got less than it
asked for (the limit is near); a reservation the table refuses (a limit is reached, by
whichever process) ends the lease. What a lease still holds is given back when it lapses,
when it has been idle for ``IDLE_SECONDS`` and on shutdown, so a request limit is never
overshot; near it, another process may be refused what this one holds unused, for at
most that long."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple
from uuid import UUID

UNLIMITED = 2**62
MAX_AHEAD = 256  # requests counted ahead of need, at most, per workspace and process
IDLE_SECONDS = 2.0  # a lease unused this long gives back what it holds


class Defaults(NamedTuple):
    """The installation's default daily limits a reservation was made with (None: none)."""

    requests: int | None = None
    tokens: int | None = None


class WorkspaceDay(NamedTuple):
    workspace_id: UUID
    day: date


class Asked(NamedTuple):
    """What reservations are counted by: a workspace, its day, the defaults they carry."""

    workspace_id: UUID
    day: date
    defaults: Defaults


class Reservation(NamedTuple):
    """One request to count (``waits``), or a lease's top-up (nobody waits for it)."""

    workspace_id: UUID
    day: date
    defaults: Defaults
    waits: bool

    @property
    def asked(self) -> Asked:
        return Asked(self.workspace_id, self.day, self.defaults)


class Reserved(NamedTuple):
    """What a reserving statement returned: how many it counted, the day's tokens so
    far and the workspace's token limit."""

    granted: int
    tokens: int
    token_limit: int


@dataclass
class Lease:
    """Requests of a workspace and day counted in the table, not yet handed out."""

    left: int = 0
    ahead: int = 0  # how many more than are waiting the next reservation asks for
    tokens: int = 0  # the day's tokens when last reserved, and those recorded here since
    token_limit: int = UNLIMITED
    generation: int | None = None  # the change feed's when reserved (None: not to use)
    used: float = 0.0  # when a request was last handed out
    defaults: Defaults = field(default_factory=Defaults)
    topping_up: bool = False  # a reservation for more is on its way

    def valid(self, generation: int | None) -> bool:
        return (
            generation is not None
            and generation == self.generation
            and self.tokens < self.token_limit
        )

    def top_up_due(self) -> bool:
        """Whether to ask for more now (half of the lease is handed out); once, until
        that reservation has run."""
        if self.left <= self.ahead // 2 and self.ahead > 0 and not self.topping_up:
            self.topping_up = True
            return True
        return False


class Ask(NamedTuple):
    """A reservation's plan for one ``Asked``: ``from_lease`` of its ``waiting`` requests
    counted from the lease, and a statement for ``asking`` more (0: none), of which
    ``waiting - from_lease`` are for requests that wait; ``ahead`` is what was asked
    ahead."""

    from_lease: int
    asking: int
    still_waiting: int
    ahead: int


class Leases:
    """Every lease of this process, and what lapsed leases owe the table."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self._leases: dict[WorkspaceDay, Lease] = {}
        # Requests that lapsed leases give back, not yet written back.
        self.owed: dict[WorkspaceDay, int] = {}
        self._idle_seconds = idle_seconds

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, workspace_id: UUID, day: date) -> Lease | None:
        return self._leases.get(WorkspaceDay(workspace_id, day))

    def take(
        self, workspace_id: UUID, day: date, generation: int | None, now: float
    ) -> Lease | None:
        """Count one request from the lease, if it holds one that is good: the lease
        (see ``Lease.top_up_due``)."""
        lease = self._leases.get(WorkspaceDay(workspace_id, day))
        if lease is None or lease.left <= 0 or not lease.valid(generation):
            return None
        lease.left -= 1
        lease.used = now
        return lease

    def plan(self, asked: Asked, waiting: int, top_up: bool, generation: int | None) -> Ask:
        """How ``waiting`` requests (and a top-up, if ``top_up``) are counted: from the
        lease first (granted by the statement that ran while they waited), then by a
        statement for the rest and enough more that the lease holds what it asks ahead."""
        key = WorkspaceDay(asked.workspace_id, asked.day)
        lease = self._leases.get(key)
        from_lease = 0
        if lease is not None and lease.valid(generation) and lease.left > 0:
            from_lease = min(waiting, lease.left)
            lease.left -= from_lease
            if from_lease == waiting and not top_up:
                return Ask(from_lease, 0, 0, 0)
        if lease is None:
            lease = self._leases[key] = Lease()
        still_waiting = waiting - from_lease
        ahead = lease.ahead if generation is not None else 0
        asking = still_waiting + max(0, ahead - lease.left)
        if asking == 0:
            lease.topping_up = False  # (it holds enough)
        return Ask(from_lease, asking, still_waiting, ahead)

    def reserved(
        self,
        asked: Asked,
        ask: Ask,
        row: Reserved | None,
        generation: int | None,
        now: float,
    ) -> int:
        """A statement of ``ask`` has run (``row``: None if the table counted none, a
        limit being reached): how many of the waiting requests it counted. The rest it
        counted is the lease's; if it counted less than asked, nothing more is asked
        ahead, and if none, the lease ends."""
        lease = self._leases[WorkspaceDay(asked.workspace_id, asked.day)]
        granted = row.granted if row is not None else 0
        counted = min(ask.still_waiting, granted)
        lease.left += granted - counted  # (more, if topped up)
        lease.used = now
        lease.defaults = asked.defaults
        lease.topping_up = False
        if row is not None:
            lease.tokens, lease.token_limit = max(lease.tokens, row.tokens), row.token_limit
            lease.generation = generation
            lease.ahead = min(MAX_AHEAD, max(1, ask.ahead * 2))
        else:
            # A limit is reached, perhaps by other processes' requests: nothing more is
            # handed out from the lease, and what it holds goes back.
            lease.generation = None
        if granted < ask.asking:
            lease.ahead = 0  # the limit is near: no more asked ahead, nor topped up
        return counted

    def failed(self, asked: Asked) -> None:
        """A statement of a plan failed: it may be asked for again."""
        self._leases[WorkspaceDay(asked.workspace_id, asked.day)].topping_up = False

    def lapse(self, generation: int | None, now: float, everything: bool = False) -> None:
        """Move what lapsed leases hold (idle, outdated, past their day; or all) to
        ``owed``. A lease past its day (or all, with ``everything``) is dropped; another
        that lapsed halves what it asks ahead (it was more than was needed)."""
        today = max((key.day for key in self._leases), default=None)
        for key, lease in list(self._leases.items()):
            lapsed = (
                everything
                or not lease.valid(generation)
                or now - lease.used > self._idle_seconds
                or key.day != today
            )
            if not lapsed:
                continue
            if key.day != today or everything:
                del self._leases[key]
            else:
                lease.ahead //= 2
            if lease.left > 0:
                self.owed[key] = self.owed.get(key, 0) + lease.left
                lease.left = 0

    def holding(self) -> bool:
        """Whether any lease holds requests not handed out."""
        return any(lease.left > 0 for lease in self._leases.values())

    def recorded(self, workspace_id: UUID, day: date, tokens: int) -> None:
        """This process recorded ``tokens`` more for the day."""
        lease = self._leases.get(WorkspaceDay(workspace_id, day))
        if lease is not None:
            lease.tokens += tokens

    def total_seen(self, workspace_id: UUID, day: date, tokens: int) -> None:
        """A statement returned the day's tokens (every process's)."""
        lease = self._leases.get(WorkspaceDay(workspace_id, day))
        if lease is not None:
            lease.tokens = max(lease.tokens, tokens)


def hand_out(
    batch: list[Reservation], counted: dict[Asked, int], reached: dict[Asked, str | Exception]
) -> list[str | Exception | None]:
    """Each reservation's result, in order: the first ones in get what was counted for
    their ``Asked`` (None); the rest, the limit reached or why its statement failed. A
    top-up's result is None (nobody waits for it)."""
    left = dict(counted)
    results: list[str | Exception | None] = []
    for reservation in batch:
        asked = reservation.asked
        if not reservation.waits:
            results.append(None)
        elif left[asked] > 0:
            left[asked] -= 1
            results.append(None)
        else:
            results.append(reached[asked])
    return results
