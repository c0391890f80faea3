"""Sandboxes and their lifecycle state machine.

Status graph (docs/architecture.md, the sandbox state machine):
  creating -> running | failed
  running -> pausing -> paused -> resuming -> running | failed
  failed -> resuming                        (a retry: the worker makes its container anew)
  offline <-> running                       (local sandboxes, as the tunnel comes and goes)
  any live status -> deleting -> deleted
Pause and resume are for cloud sandboxes only. A deletion with nothing to remove from the
container engine (a local sandbox, a cloud one that never started) is finished at once,
so no sandbox waits on an engine that may never answer; one that must wait says why in
``error`` (``DeletionDelayed``) until the worker has removed what it held.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event

from domain.base import SandbarAggregate
from domain.errors import IllegalTransition


class SandboxType(StrEnum):
    opencode = "opencode"
    openclaw = "openclaw"


class Kind(StrEnum):
    cloud = "cloud"
    local = "local"


class Status(StrEnum):
    creating = "creating"
    running = "running"
    pausing = "pausing"
    paused = "paused"
    resuming = "resuming"
    offline = "offline"
    failed = "failed"
    deleting = "deleting"
    deleted = "deleted"


# The port each agent type serves on, and the subdomain prefix that opens it.
PORTS = {SandboxType.opencode: 4096, SandboxType.openclaw: 18789}
HOST_PREFIXES = {SandboxType.opencode: "oc", SandboxType.openclaw: "claw"}

# The status each lifecycle event leads to; the read model uses it too.
EVENT_STATUS: dict[str, Status] = {
    "Requested": Status.creating,  # a local sandbox starts offline instead
    "Started": Status.running,
    "Resumed": Status.running,
    "Failed": Status.failed,
    "PauseRequested": Status.pausing,
    "Paused": Status.paused,
    "ResumeRequested": Status.resuming,
    "DeletionRequested": Status.deleting,
    "DeletionDelayed": Status.deleting,
    "Deleted": Status.deleted,
    "Relocated": Status.running,
    "Connected": Status.running,
    "Disconnected": Status.offline,
}

# A status as a sentence says it ("this one is being created").
WORDS: dict[Status, str] = {
    **{s: s.value for s in Status},
    Status.creating: "being created",
    Status.deleting: "being deleted",
}
LOCAL_REFUSAL = "a local sandbox runs on its owner's machine: Sandbar cannot pause or resume it"

LIVE = frozenset(Status) - {Status.deleting, Status.deleted}

# Every legal status change: (from, to).
TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset(
    {
        (Status.creating, Status.running),
        (Status.creating, Status.failed),
        (Status.running, Status.pausing),
        (Status.pausing, Status.paused),
        (Status.paused, Status.resuming),
        (Status.resuming, Status.running),
        (Status.resuming, Status.failed),
        (Status.failed, Status.resuming),
        (Status.offline, Status.running),
        (Status.running, Status.offline),
        (Status.deleting, Status.deleted),
    }
    | {(s, Status.deleting) for s in LIVE}
)


class Sandbox(SandbarAggregate):
    class_version = 1  # of its snapshots' state, as each event's below

    # The events, declared (docs/architecture.md, "Changing an event"): the names are
    # their stored topics, so a rename strands every event already written.
    class Requested(SandbarAggregate.Created):
        class_version = 1
        workspace_id: UUID
        name: str
        type: str
        kind: str

    class PauseRequested(SandbarAggregate.Event):
        class_version = 1

    class ResumeRequested(SandbarAggregate.Event):
        class_version = 1

    class DeletionRequested(SandbarAggregate.Event):
        class_version = 1

    class DeletionDelayed(SandbarAggregate.Event):
        class_version = 1
        reason: str

    class Started(SandbarAggregate.Event):
        class_version = 1
        address: str

    class Resumed(SandbarAggregate.Event):
        class_version = 1
        address: str

    class Relocated(SandbarAggregate.Event):
        class_version = 1
        address: str

    class Failed(SandbarAggregate.Event):
        class_version = 1
        reason: str

    class Paused(SandbarAggregate.Event):
        class_version = 1

    class Deleted(SandbarAggregate.Event):
        class_version = 1

    class Connected(SandbarAggregate.Event):
        class_version = 1

    class Disconnected(SandbarAggregate.Event):
        class_version = 1

    @event(Requested)
    def __init__(self, workspace_id: UUID, name: str, type: str, kind: str) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.type = SandboxType(type)
        self.kind = Kind(kind)
        self.status = Status.offline if self.kind is Kind.local else Status.creating
        self.address: str | None = None
        self.error: str | None = None
        self.ever_started = False
        self.remake = False  # a failed sandbox being retried: make its container anew

    @property
    def is_live(self) -> bool:
        return self.status in LIVE

    @property
    def holds_engine_resources(self) -> bool:
        """Whether deleting it must wait for the engine to remove its container and home:
        a cloud sandbox whose agent ever started. A local sandbox has nothing there; a cloud
        one that never started has at most what a failed start left, which the worker
        removes when it converges the deleted sandbox or, at the latest, on its sweep."""
        return self.kind is Kind.cloud and self.ever_started

    def _check(self, to: Status, *, cloud_only: bool = False, local_only: bool = False) -> None:
        if cloud_only and self.kind is not Kind.cloud:
            raise IllegalTransition("only cloud sandboxes can be paused and resumed")
        if local_only and self.kind is not Kind.local:
            raise IllegalTransition("only local sandboxes connect through a tunnel")
        if (self.status, to) not in TRANSITIONS:
            raise IllegalTransition(f"a {self.status} sandbox cannot become {to}")

    def _refuse_unless(
        self, allowed: tuple[Status, ...], already: tuple[Status, ...], action: str
    ) -> None:
        """A user's command refused in their words: what the sandbox is, what would work."""
        if self.status in allowed:
            return
        if self.status in already:
            raise IllegalTransition(f"the sandbox is already {WORDS[self.status]}")
        wanted = " or ".join(WORDS[s] for s in allowed)
        raise IllegalTransition(
            f"only a {wanted} sandbox can be {action}; this one is {WORDS[self.status]}"
        )

    # Commands from users.
    def request_pause(self) -> None:
        if self.kind is not Kind.cloud:
            raise IllegalTransition(LOCAL_REFUSAL)
        self._refuse_unless((Status.running,), (Status.pausing, Status.paused), "paused")
        self._pause_requested()

    def request_resume(self) -> None:
        """Resume a paused sandbox, or retry a failed one (its container is made anew)."""
        if self.kind is not Kind.cloud:
            raise IllegalTransition(LOCAL_REFUSAL)
        self._refuse_unless(
            (Status.paused, Status.failed), (Status.resuming, Status.running), "resumed"
        )
        self._resume_requested()

    def request_deletion(self) -> None:
        if self.status is Status.deleting:
            raise IllegalTransition("the sandbox is already being deleted")
        if self.status is Status.deleted:
            raise IllegalTransition("the sandbox is deleted")
        self._deletion_requested()

    def delete(self) -> None:
        """A user's delete: ask for the deletion, and finish it at once when the engine
        holds nothing of the sandbox. Asking again while it is deleting changes nothing
        (unless it holds nothing, a deletion left from before this rule: finished now)."""
        if self.status is not Status.deleting:
            self.request_deletion()
        if not self.holds_engine_resources:
            self._deleted()

    def record_deletion_delayed(self, reason: str) -> None:
        """The engine could not remove what the sandbox holds yet; ``reason`` says why and
        what to do. Recorded only when the reason changes, so a sweep adds no event."""
        if self.status is not Status.deleting:
            raise IllegalTransition(f"a {self.status} sandbox is not being deleted")
        if reason != self.error:
            self._deletion_delayed(reason=reason)

    # Outcomes reported by the process manager and the tunnel.
    def record_started(self, address: str) -> None:
        to = Status.running
        self._check(to, cloud_only=True)
        if self.status is Status.resuming:
            self._resumed(address=address)
        else:
            self._started(address=address)

    def record_relocated(self, address: str) -> None:
        """A running sandbox's container was recreated (it had vanished) at ``address``."""
        if self.kind is not Kind.cloud or self.status is not Status.running:
            raise IllegalTransition(f"a {self.status} sandbox cannot move")
        if address != self.address:
            self._relocated(address=address)

    def record_failed(self, reason: str) -> None:
        self._check(Status.failed)
        self._failed(reason=reason)

    def record_paused(self) -> None:
        self._check(Status.paused, cloud_only=True)
        self._paused()

    def record_deleted(self) -> None:
        self._check(Status.deleted)
        self._deleted()

    def record_connected(self) -> None:
        self._check(Status.running, local_only=True)
        self._connected()

    def record_disconnected(self) -> None:
        self._check(Status.offline, local_only=True)
        self._disconnected()

    @event(PauseRequested)
    def _pause_requested(self) -> None:
        self.status = Status.pausing

    @event(ResumeRequested)
    def _resume_requested(self) -> None:
        self.remake = self.status is Status.failed  # a retry: its container is made anew
        self.status = Status.resuming
        self.error = None

    @event(DeletionRequested)
    def _deletion_requested(self) -> None:
        self.status = Status.deleting
        self.error = None

    @event(DeletionDelayed)
    def _deletion_delayed(self, reason: str) -> None:
        self.error = reason

    @event(Started)
    def _started(self, address: str) -> None:
        self.status = Status.running
        self.address = address
        self.error = None
        self.ever_started = True

    @event(Resumed)
    def _resumed(self, address: str) -> None:
        self.status = Status.running
        self.address = address
        self.error = None
        self.ever_started = True
        self.remake = False

    @event(Relocated)
    def _relocated(self, address: str) -> None:
        self.address = address
        self.ever_started = True

    @event(Failed)
    def _failed(self, reason: str) -> None:
        self.status = Status.failed
        self.error = reason

    @event(Paused)
    def _paused(self) -> None:
        self.status = Status.paused

    @event(Deleted)
    def _deleted(self) -> None:
        self.status = Status.deleted
        self.address = None

    @event(Connected)
    def _connected(self) -> None:
        self.status = Status.running

    @event(Disconnected)
    def _disconnected(self) -> None:
        self.status = Status.offline
