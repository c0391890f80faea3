"""Snapshots: a workspace snapshotted when it listed its sandboxes still loads, and
still cascades; a workspace made now never grows with its sandboxes."""

from __future__ import annotations

import psycopg

from domain.sandboxes import Sandbox, Status
from domain.workspaces import Workspace


def test_a_big_workspace_stays_small_and_still_deletes_everything(sandbar, server_env):
    user, _ = sandbar.accounts.register("snapshots-owner", "a long password", None)
    workspace = sandbar.workspaces.create(user["id"], "big")["id"]
    made = [
        sandbar.sandboxes.create(user["id"], workspace, f"s{i}", "opencode")["id"]
        for i in range(60)
    ]
    loaded = sandbar.log.find(workspace, Workspace)
    assert loaded.version == 1  # (no event per sandbox, so nothing to snapshot)
    assert "sandbox_ids" not in vars(loaded)

    sandbar.workspaces.delete(user["id"], workspace)
    assert sandbar.log.find(workspace, Workspace).deleted
    assert {sandbar.log.find(s, Sandbox).status for s in made} == {Status.deleted}  # (none started)
    assert sandbar.view.rebuild(sandbar.log.mapper.to_domain_event).identical


def test_a_snapshot_that_lists_sandboxes_loads_without_them(sandbar, server_env):
    """A workspace snapshot as class version 1 took it (its sandboxes listed, no class
    version stored) loads through ``Workspace.upcast_v1_v2``; the workspace still
    deletes its sandboxes, found in the views."""
    user, _ = sandbar.accounts.register("old-snapshot-owner", "a long password", None)
    workspace = sandbar.workspaces.create(user["id"], "old")["id"]
    made = [
        sandbar.sandboxes.create(user["id"], workspace, f"s{i}", "opencode")["id"] for i in range(3)
    ]
    snapshot = Workspace.Snapshot.take(sandbar.log.find(workspace, Workspace))
    snapshot.state.pop("class_version")
    snapshot.state["sandbox_ids"] = made
    assert sandbar.log.snapshots is not None
    sandbar.log.snapshots.put([snapshot])
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        (stored,) = conn.execute(
            "SELECT state FROM sandbar_snapshots WHERE originator_id = %s", (workspace,)
        ).fetchone()
    assert b"sandbox_ids" in bytes(stored) and b"class_version" not in bytes(stored)

    loaded = sandbar.log.find(workspace, Workspace)
    assert loaded is not None and loaded.name == "old" and not loaded.deleted
    assert "sandbox_ids" not in vars(loaded)

    sandbar.workspaces.delete(user["id"], workspace)
    assert {sandbar.log.find(s, Sandbox).status for s in made} == {Status.deleted}
