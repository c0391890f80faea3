"""A workspace with many sandboxes is loaded from a snapshot, and still cascades."""

from __future__ import annotations

import psycopg

from domain.sandboxes import Sandbox, Status
from domain.workspaces import Workspace


def test_a_big_workspace_is_snapshotted_and_still_deletes_everything(sandbar, server_env):
    user, _ = sandbar.accounts.register("snapshots-owner", "a long password", None)
    workspace = sandbar.workspaces.create(user["id"], "big")["id"]
    made = [
        sandbar.sandboxes.create(user["id"], workspace, f"s{i}", "opencode")["id"]
        for i in range(60)
    ]
    with psycopg.connect(server_env["SANDBAR_DATABASE_URL"]) as conn:
        versions = [
            r[0]
            for r in conn.execute(
                "SELECT originator_version FROM sandbar_snapshots WHERE originator_id = %s",
                (workspace,),
            )
        ]
    assert versions == [50]
    loaded = sandbar.log.find(workspace, Workspace)
    assert loaded.sandbox_ids == made

    sandbar.workspaces.delete(user["id"], workspace)
    assert sandbar.log.find(workspace, Workspace).deleted
    assert {sandbar.log.find(s, Sandbox).status for s in made} == {Status.deleted}  # (none started)
    assert sandbar.view.rebuild(sandbar.log.mapper.to_domain_event).identical
