"""A long event log, made fast: aggregates saved through the application (so the views
and the audit index are written as ever), many to a transaction. Shared by the tests of
the audit commands' memory and by bench/scale_audit.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from application.eventlog import EventLog
from domain.base import acting_as
from domain.sandboxes import Sandbox

ROOT = Path(__file__).resolve().parent.parent
PER_SAVE = 1000  # events in one transaction

# Runs ``sandbar`` in this interpreter and prints its own peak RSS (KiB) on stderr's
# last line, whatever way it exits. (VmHWM, not getrusage: a child's ru_maxrss keeps the
# high-water mark of the process it was forked from, here the tests' own.)
_MEASURED = """
import runpy, sys
sys.argv = ["sandbar", *sys.argv[1:]]
try:
    runpy.run_module("interfaces.cli.main", run_name="__main__")
finally:
    sys.stdout.flush()
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(f"peak_rss_kib={peak}", file=sys.stderr)
"""


def noise(log: EventLog, events: int, actor: uuid.UUID | None = None) -> None:
    """``events`` sandbox requests, in workspaces of their own (a hundred sandboxes
    each), by ``actor``: a log that grows without touching anyone's workspace."""
    actor = actor or uuid.uuid4()
    workspace = uuid.uuid4()
    made = 0
    while made < events:
        batch = []
        with acting_as(actor):
            for _ in range(min(PER_SAVE, events - made)):
                if made % 100 == 0:
                    workspace = uuid.uuid4()
                batch.append(
                    Sandbox(workspace_id=workspace, name=f"n{made}", type="opencode", kind="cloud")
                )
                made += 1
        log.save(*batch)


def measured_sandbar(*args: str, env: dict[str, str], timeout: float = 600) -> tuple[Any, int]:
    """Run ``sandbar *args`` (output to /dev/null); (the finished process, its peak RSS
    in bytes)."""
    r = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    if not last.startswith("peak_rss_kib="):
        raise AssertionError(f"sandbar {' '.join(args)}: no peak RSS reported:\n{r.stderr}")
    return r, int(last.split("=", 1)[1]) * 1024
