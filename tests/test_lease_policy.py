"""The lease policy of request counting (infrastructure/usage_leases.py) alone, without a
database: what the table grants is played by the test. The same policy runs against
PostgreSQL in tests/test_anthropic_proxy.py and tests/test_concurrency.py."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from infrastructure.usage_leases import (
    MAX_AHEAD,
    Asked,
    Defaults,
    Leases,
    Reservation,
    Reserved,
    hand_out,
)

DAY = date(2026, 12, 6)
GENERATION = 7
NO_LIMIT = 2**62


def reserve(
    leases: Leases,
    asked: Asked,
    waiting: int,
    grant: int | None = None,
    *,
    top_up: bool = False,
    generation: int | None = GENERATION,
    tokens: int = 0,
    token_limit: int = NO_LIMIT,
    now: float = 0.0,
) -> tuple[int, int]:
    """One reservation as UsageTable runs it, the table granting ``grant`` (all that is
    asked if None; 0 is a refusal): (requests counted for those waiting, requests the
    statement asked for)."""
    ask = leases.plan(asked, waiting, top_up, generation)
    if ask.asking == 0:
        return ask.from_lease, 0
    granted = ask.asking if grant is None else min(grant, ask.asking)
    row = Reserved(granted, tokens, token_limit) if granted else None
    return ask.from_lease + leases.reserved(asked, ask, row, generation, now), ask.asking


def asked_for(workspace_id: UUID | None = None, day: date = DAY) -> Asked:
    return Asked(workspace_id or uuid4(), day, Defaults())


def test_a_workspace_that_keeps_asking_is_counted_ahead_twice_as_far_each_time() -> None:
    leases, asked = Leases(), asked_for()
    assert reserve(leases, asked, 3) == (3, 3)  # the first time: only those waiting
    lease = leases.get(asked.workspace_id, DAY)
    assert lease is not None and (lease.left, lease.ahead) == (0, 1)
    asking = []
    for _ in range(12):
        counted, asked_now = reserve(leases, asked, 1)
        assert counted == 1
        asking.append(asked_now - 1)  # ahead of need
        while leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is not None:
            pass
    assert asking[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert max(asking) == MAX_AHEAD


def test_requests_are_handed_out_from_the_lease_while_nothing_has_changed() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1)
    reserve(leases, asked, 1)  # 1 for the request, 1 ahead
    w = asked.workspace_id
    assert leases.take(w, DAY, GENERATION + 1, 0.0) is None  # a limit changed, say
    assert leases.take(w, DAY, None, 0.0) is None  # the change feed cannot vouch
    assert leases.take(w, DAY + timedelta(days=1), GENERATION, 0.0) is None  # another day
    assert leases.take(uuid4(), DAY, GENERATION, 0.0) is None  # another workspace
    assert leases.take(w, DAY, GENERATION, 0.0) is not None
    assert leases.take(w, DAY, GENERATION, 0.0) is None  # all handed out


def test_nothing_is_handed_out_once_the_tokens_reach_their_limit() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1, tokens=90, token_limit=100)
    reserve(leases, asked, 1, tokens=90, token_limit=100)
    leases.recorded(asked.workspace_id, DAY, 10)  # this process's own answers
    assert leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is None


def test_the_tokens_every_process_used_count_too() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1, tokens=0, token_limit=100)
    reserve(leases, asked, 1, tokens=0, token_limit=100)
    leases.total_seen(asked.workspace_id, DAY, 100)
    assert leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is None


def test_half_way_through_a_lease_it_asks_for_more_once() -> None:
    leases, asked = Leases(), asked_for()
    for _ in range(4):
        reserve(leases, asked, 1)
        while leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is not None:
            pass
    reserve(leases, asked, 1)
    lease = leases.get(asked.workspace_id, DAY)
    assert lease is not None and lease.left == 8 and lease.ahead == 16
    due = []
    for _ in range(8):
        taken = leases.take(asked.workspace_id, DAY, GENERATION, 0.0)
        assert taken is not None
        due.append(taken.top_up_due())
    # It holds half of what it now asks ahead (16): the first take asks for more, once.
    assert due == [True] + [False] * 7
    # The top-up runs with nobody waiting: it refills the lease.
    assert reserve(leases, asked, 0, top_up=True) == (0, 16)
    assert lease.left == 16 and not lease.topping_up


def test_near_the_limit_it_stops_asking_ahead() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1)
    reserve(leases, asked, 1)
    while leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is not None:
        pass
    counted, asking = reserve(leases, asked, 2, grant=2)  # asked 2 + 2 ahead, got 2
    assert (counted, asking) == (2, 4)
    lease = leases.get(asked.workspace_id, DAY)
    assert lease is not None and lease.ahead == 0
    assert reserve(leases, asked, 1) == (1, 1)  # only what waits, from now on


def test_a_refusal_ends_the_lease_and_what_it_holds_goes_back() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1)
    reserve(leases, asked, 1)  # 1 for the request, 1 held ahead
    assert reserve(leases, asked, 0, grant=0, top_up=True) == (0, 1)  # a limit is reached
    assert leases.take(asked.workspace_id, DAY, GENERATION, 0.0) is None
    leases.lapse(GENERATION, 0.0)
    assert leases.owed == {(asked.workspace_id, DAY): 1}


def test_requests_a_refusal_leaves_waiting_are_refused_after_those_the_lease_covers() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1)
    reserve(leases, asked, 1)  # holds 1
    assert reserve(leases, asked, 3, grant=0) == (1, 4)  # 1 from the lease; 2 + 2 ahead asked


def drain(leases: Leases, asked: Asked) -> None:
    while leases.take(asked.workspace_id, asked.day, GENERATION, 0.0) is not None:
        pass


def test_an_idle_lease_gives_back_what_it_holds_and_asks_less_ahead() -> None:
    leases, asked = Leases(idle_seconds=2.0), asked_for()
    for now in (0.0, 0.5, 1.0):
        drain(leases, asked)
        reserve(leases, asked, 1, now=now)
    lease = leases.get(asked.workspace_id, DAY)
    assert lease is not None and (lease.left, lease.ahead) == (2, 4)
    leases.lapse(GENERATION, 2.9)
    assert leases.owed == {} and lease.left == 2  # not idle long enough
    leases.lapse(GENERATION, 3.1)
    assert leases.owed == {(asked.workspace_id, DAY): 2}
    assert (lease.left, lease.ahead) == (0, 2)
    assert leases.get(asked.workspace_id, DAY) is lease  # kept: it asks on from there


def test_an_outdated_lease_gives_back_at_once() -> None:
    leases, asked = Leases(), asked_for()
    reserve(leases, asked, 1)
    reserve(leases, asked, 1)
    leases.lapse(GENERATION + 1, 0.0)  # a limit changed, say
    assert leases.owed == {(asked.workspace_id, DAY): 1}


def test_yesterdays_leases_are_dropped_and_give_back() -> None:
    leases = Leases()
    w = uuid4()
    yesterday, today = asked_for(w, DAY - timedelta(days=1)), asked_for(w, DAY)
    reserve(leases, yesterday, 1)
    reserve(leases, yesterday, 1)
    reserve(leases, today, 1)
    leases.lapse(GENERATION, 0.0)
    assert leases.owed == {(w, yesterday.day): 1}
    assert leases.get(w, yesterday.day) is None and leases.get(w, DAY) is not None


def test_on_shutdown_everything_goes_back() -> None:
    leases = Leases()
    a, b = asked_for(), asked_for()
    for asked in (a, b):
        reserve(leases, asked, 1)
        reserve(leases, asked, 1)
    assert leases.holding()
    leases.lapse(GENERATION, 0.0, everything=True)
    assert leases.owed == {(a.workspace_id, DAY): 1, (b.workspace_id, DAY): 1}
    assert len(leases) == 0 and not leases.holding()


def test_the_first_ones_in_get_what_was_counted() -> None:
    asked = asked_for()
    other = asked_for()
    batch = [
        Reservation(asked.workspace_id, DAY, Defaults(), True),
        Reservation(other.workspace_id, DAY, Defaults(), True),
        Reservation(asked.workspace_id, DAY, Defaults(), False),  # a top-up
        Reservation(asked.workspace_id, DAY, Defaults(), True),
        Reservation(asked.workspace_id, DAY, Defaults(), True),
    ]
    failure = ConnectionError("the database went away")
    results = hand_out(batch, {asked: 2, other: 0}, {asked: "requests", other: failure})
    assert results == [None, failure, None, None, "requests"]


operation = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 5), st.integers(0, 300), st.booleans()),
    st.tuples(st.just("take"), st.integers(1, 40)),
    st.tuples(st.just("lapse"), st.floats(0, 5), st.booleans()),
    st.tuples(
        st.just("change"),
    ),
)


@given(operations=st.lists(operation, max_size=40))
def test_every_request_the_table_counted_is_handed_out_held_or_given_back(
    operations: list[tuple[Any, ...]],
) -> None:
    """Whatever happens, no request counted in the table is lost or handed out twice:
    what the table granted is what was handed out, plus what leases hold, plus what they
    owe or gave back; and no lease asks further ahead than ``MAX_AHEAD``."""
    leases, asked = Leases(idle_seconds=2.0), asked_for()
    w = asked.workspace_id
    generation, now = GENERATION, 0.0
    granted = handed_out = given_back = 0
    for op in operations:
        now += 0.5
        if op[0] == "reserve":
            _, waiting, grant, top_up = op
            ask = leases.plan(asked, waiting, top_up, generation)
            got = ask.from_lease
            if ask.asking:
                granting = min(grant, ask.asking)
                granted += granting
                row = Reserved(granting, 0, NO_LIMIT) if granting else None
                got += leases.reserved(asked, ask, row, generation, now)
            assert got <= waiting
            handed_out += got
        elif op[0] == "take":
            for _ in range(op[1]):
                if leases.take(w, DAY, generation, now) is None:
                    break
                handed_out += 1
        elif op[0] == "lapse":
            leases.lapse(generation, now + op[1], everything=op[2])
            given_back += sum(leases.owed.values())
            leases.owed.clear()  # (written back)
        else:
            generation += 1
        lease = leases.get(w, DAY)
        held = lease.left if lease is not None else 0
        assert granted == handed_out + held + given_back + sum(leases.owed.values())
        assert lease is None or lease.ahead <= MAX_AHEAD
