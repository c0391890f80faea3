"""The audit commands hold what they print, not the log: run as a user would (a
subprocess), on a log of N events and then of 10N, their peak RSS is the same but for a
few MiB. No timing here: bench/scale_audit.py measures time and RSS at 200k and 1M."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from domain.base import acting_as
from domain.workspaces import Membership, Workspace
from infrastructure.settings import Settings
from interfaces.bootstrap import Sandbar, build
from tests.conftest import FAST_HASHING, run_sandbar
from tests.seeding import measured_sandbar, noise

N = 2_000
GROWTH = 8 * 1024 * 1024  # bytes of peak RSS the tenfold log may add (holding it: ~25 MiB)


@dataclass
class Grown:
    sandbar: Sandbar
    env: dict[str, str]
    workspace: uuid.UUID
    owner: uuid.UUID


@pytest.fixture(scope="module")
def grown(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Grown]:
    env = {
        **FAST_HASHING,
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path_factory.mktemp("audit-memory")),
        "SANDBAR_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
    }
    sandbar = build(Settings.from_env(env))
    owner = uuid.uuid4()
    with acting_as(owner):
        workspace = Workspace(name="watched", owner_id=owner)
        member = Membership(workspace_id=workspace.id, user_id=owner, role="owner")
    sandbar.log.save(workspace, member)
    yield Grown(sandbar, env, workspace.id, owner)
    sandbar.close()


def commands(g: Grown) -> dict[str, list[str]]:
    at = datetime.now(UTC).isoformat()
    w = str(g.workspace)
    return {
        "log --workspace": ["audit", "log", "--json", "--workspace", w],
        "log --user": ["audit", "log", "--json", "--user", str(g.owner)],
        "log (all, a table)": ["audit", "log"],
        "log (all, JSON)": ["audit", "log", "--json"],
        "replay": ["audit", "replay", "--workspace", w, "--at", at],
    }


def peaks(g: Grown) -> dict[str, int]:
    found = {}
    for name, args in commands(g).items():
        r, peak = measured_sandbar(*args, env=g.env)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
        found[name] = peak
    return found


def test_the_audit_commands_hold_the_same_memory_for_a_tenfold_log(grown: Grown) -> None:
    g = grown
    noise(g.sandbar.log, N)
    small = peaks(g)
    noise(g.sandbar.log, 9 * N)
    large = peaks(g)
    grew = {name: large[name] - small[name] for name in small}
    assert all(b < GROWTH for b in grew.values()), {
        name: f"{small[name] >> 20} -> {large[name] >> 20} MiB" for name in small
    }

    # And the filters still find what they should among the noise.
    out = run_sandbar("audit", "log", "--json", "--workspace", str(g.workspace), env=g.env)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["event"] for r in records] == ["Workspace.Created", "Membership.Added"]
    everything = run_sandbar("audit", "log", "--json", env=g.env)
    assert len(everything.stdout.splitlines()) == 2 + 10 * N
