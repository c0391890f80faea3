"""The process manager for cloud sandboxes: turns sandbox events into container actions
and records the outcomes.

It follows the log (with its own tracking position) for Requested, PauseRequested,
ResumeRequested and DeletionRequested, and for each one *converges* that sandbox: it loads
the aggregate and does what its current status asks (start, stop, remove), then records
the outcome through an idempotent command as actor ``system``. Because the work is decided
by the current state, processing an event twice, or late, is harmless, and the same
function serves reconciliation on start (after a crash, or containers removed by hand) and
the periodic sweep that also pauses idle sandboxes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from application.eventlog import EventLog
from application.lanes import Lanes
from application.ports import (
    Activity,
    AgentProbe,
    ContainerEngine,
    ContainerVanished,
    EngineUnavailable,
    ReadModel,
    StartRefused,
    TrackingStore,
)
from domain.base import SYSTEM, acting_as
from domain.errors import IllegalTransition
from domain.sandboxes import Kind, Sandbox, Status

log = logging.getLogger("sandbar.worker")

TOPICS = [
    get_topic(cls)
    for cls in (
        Sandbox.Requested,
        Sandbox.PauseRequested,
        Sandbox.ResumeRequested,
        Sandbox.DeletionRequested,
    )
]


class ContainerWorker:
    def __init__(
        self,
        log_: EventLog,
        reads: ReadModel,
        engine: ContainerEngine,
        probe: AgentProbe,
        activity: Activity,
        tracking: TrackingStore,
        *,
        ready_timeout: float,
        idle_timeout: float,
        sweep_every: float = 30.0,
    ) -> None:
        self._log = log_
        self._reads = reads
        self._engine = engine
        self._probe = probe
        self._activity = activity
        self._tracking = tracking
        self._ready_timeout = ready_timeout
        self._idle_timeout = idle_timeout
        self._sweep_every = sweep_every
        self._lanes = Lanes(self._converge_key, tracking.advance)
        self._engine_seen: bool | None = None  # unknown until the first sweep
        self._seen_lock = threading.Lock()

    # The loop.
    def run(self, stop: threading.Event) -> None:
        """Follow the log until ``stop`` is set; sweep periodically."""
        sweeper = threading.Thread(
            target=self._sweep_loop, args=(stop,), daemon=True, name="sandbar-sweep"
        )
        sweeper.start()
        while not stop.is_set():
            try:
                self._follow(stop)
            except Exception:
                log.exception("following the event log failed; starting again")
                stop.wait(1.0)
        self._lanes.close()

    def _follow(self, stop: threading.Event) -> None:
        subscription = self._log.recorder.subscribe(gt=self._tracking.position(), topics=TOPICS)

        def stop_following() -> None:
            stop.wait()
            subscription.stop()

        watcher = threading.Thread(target=stop_following, daemon=True)
        watcher.start()
        with subscription:
            for notification in subscription:
                if stop.is_set():
                    break
                self._lanes.submit(notification.originator_id, notification.id)

    def _sweep_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciliation failed")
            stop.wait(self._sweep_every)

    # Reconciliation: make the engine agree with the log.
    def reconcile(self) -> None:
        # The engine is listed before the log is read: a sandbox whose container exists
        # when listed was recorded before it, so a sandbox created meanwhile is never
        # taken for an orphan.
        try:
            held = self._engine.sandbox_ids()
            self._engine_answers()
        except EngineUnavailable as e:
            self._engine_down(e)
            held = set()
        rows = self._reads.cloud_sandboxes()
        for sandbox_id in held - {r["id"] for r in rows}:
            log.info("removing what sandbox %s held: it is not live", sandbox_id)
            try:
                self._engine.remove(sandbox_id, volume=True)
            except EngineUnavailable as e:
                self._engine_down(e)
                break
        for row in rows:
            self._lanes.submit(row["id"])
        self._pause_idle(rows)

    def _engine_answers(self) -> None:
        with self._seen_lock:
            if not self._engine_seen:
                log.info("the container engine answers")
            self._engine_seen = True

    def _engine_down(self, e: EngineUnavailable) -> None:
        """Say once, with the engine client's own words, that the engine is gone; not
        again on every sweep or for every sandbox, until it has answered again."""
        with self._seen_lock:
            if self._engine_seen is not False:
                log.warning("%s [%s]; cloud sandboxes wait until it answers", e, e.detail)
            self._engine_seen = False

    def _pause_idle(self, rows: list[dict[str, Any]]) -> None:
        if self._idle_timeout <= 0:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=self._idle_timeout)
        for row in rows:
            if row["status"] != Status.running:
                continue
            seen = self._activity.last_seen(row["id"])
            last = max(row["updated_at"], seen) if seen else row["updated_at"]
            if last < cutoff:
                log.info("pausing sandbox %s: idle since %s", row["id"], last.isoformat())
                self._record(row["id"], lambda s: s.request_pause())

    # Converging one sandbox.
    def _converge_key(self, key: Any) -> None:
        self.converge(key)

    def converge(self, sandbox_id: UUID) -> None:
        sandbox = self._log.find(sandbox_id, Sandbox)
        if sandbox is None:
            return
        status = sandbox.status
        if sandbox.kind is not Kind.cloud:
            # A local sandbox holds nothing in the engine: a deletion asked for it (say,
            # with its workspace) is finished here.
            if status is Status.deleting:
                self._record(sandbox_id, lambda s: s.record_deleted())
            return
        try:
            if status in (Status.creating, Status.resuming):
                self._start(sandbox)
            elif status is Status.pausing:
                self._engine.stop(sandbox_id)
                self._record(sandbox_id, lambda s: s.record_paused())
            elif status is Status.deleting:
                self._engine.remove(sandbox_id, volume=True)
                self._record(sandbox_id, lambda s: s.record_deleted())
            elif status is Status.deleted:  # deleted at once: remove what a start left
                self._engine.remove(sandbox_id, volume=True)
            elif status is Status.running:
                if not self._engine.is_running(sandbox_id):
                    self._recover(sandbox)
            elif status is Status.paused and self._engine.is_running(sandbox_id):
                self._engine.stop(sandbox_id)
            elif status is Status.failed:
                self._engine.remove(sandbox_id, volume=False)  # keep the home for a retry
        except ContainerVanished:
            log.warning(
                "sandbox %s: its container was removed while starting; the next"
                " sweep starts it again",
                sandbox_id,
            )
        except EngineUnavailable as e:
            self._engine_down(e)
            reason = str(e)
            if status in (Status.creating, Status.resuming):
                self._record(sandbox_id, lambda s: s.record_failed(reason))
            elif status is Status.deleting and not sandbox.holds_engine_resources:
                # Nothing of value waits in the engine (a start that never got as far as
                # the agent): deleted now; the sweep removes any leftover once it answers.
                self._record(sandbox_id, lambda s: s.record_deleted())
            elif status is Status.deleting:
                self._record(sandbox_id, lambda s: s.record_deletion_delayed(reason))
            else:
                log.debug("sandbox %s stays %s: %s", sandbox_id, status, reason)
        else:
            self._engine_answers()

    def _start(self, sandbox: Sandbox) -> None:
        sandbox_id = sandbox.id
        try:
            if sandbox.remake:  # a retry: what failed is made anew (the home stays)
                self._engine.remove(sandbox_id, volume=False)
            address = self._engine.start(sandbox_id, sandbox.workspace_id, sandbox.type)
        except StartRefused as e:
            reason = str(e)
            self._record(sandbox_id, lambda s: s.record_failed(reason))
            return
        if self._probe.wait_ready(sandbox.type, address, sandbox_id, self._ready_timeout):
            self._record(sandbox_id, lambda s: s.record_started(address))
            return
        self._engine.stop(sandbox_id)
        reason = f"the agent did not answer on its port within {self._ready_timeout:g} s"
        self._record(sandbox_id, lambda s: s.record_failed(reason))

    def _recover(self, sandbox: Sandbox) -> None:
        log.info("sandbox %s is running but its container is not; starting it again", sandbox.id)
        try:
            address = self._engine.start(sandbox.id, sandbox.workspace_id, sandbox.type)
        except StartRefused as e:
            log.warning("cannot recover sandbox %s: %s", sandbox.id, e)
            return
        if self._probe.wait_ready(sandbox.type, address, sandbox.id, self._ready_timeout):
            self._record(sandbox.id, lambda s: s.record_relocated(address))

    def _record(self, sandbox_id: UUID, outcome: Callable[[Sandbox], None]) -> None:
        """Apply an outcome as ``system``; if the sandbox has moved on meanwhile (say, its
        deletion was asked while it started), the outcome no longer applies and its lane
        runs again to act on the new status."""

        def command() -> None:
            sandbox = self._log.find(sandbox_id, Sandbox)
            if sandbox is None:
                return
            try:
                with acting_as(SYSTEM):
                    outcome(sandbox)
            except IllegalTransition as e:
                log.info("sandbox %s: outcome not recorded (%s)", sandbox_id, e)
                self._lanes.submit(sandbox_id)
                return
            self._log.save(sandbox)

        self._log.retrying(command)
