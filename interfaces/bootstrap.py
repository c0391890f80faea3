"""The composition root: settings in, a wired Sandbar out."""

from __future__ import annotations

from dataclasses import dataclass

from application.access import Access
from application.accounts import Accounts
from application.container_worker import ContainerWorker
from application.eventlog import EventLog
from application.sandboxes import Sandboxes
from application.throttle import LoginThrottle, RateLimit
from application.workspaces import Workspaces
from infrastructure.activity import ActivityTable
from infrastructure.agents import DerivedSecrets
from infrastructure.containers import DockerEngine
from infrastructure.credentials import Credentials
from infrastructure.database import database_url, eventsourcing_env, server_key
from infrastructure.eventstore import ProjectingRecorder
from infrastructure.passwords import Argon2Passwords
from infrastructure.probe import HealthProbe
from infrastructure.settings import Settings
from infrastructure.tracking import FollowerTracking
from projections.queries import ReadModelQueries
from projections.view import ReadModelView


@dataclass
class Sandbar:
    settings: Settings
    log: EventLog
    view: ReadModelView
    reads: ReadModelQueries
    accounts: Accounts
    workspaces: Workspaces
    sandboxes: Sandboxes
    secrets: DerivedSecrets
    activity: ActivityTable

    def container_worker(self) -> ContainerWorker:
        """The process manager for cloud sandboxes (run it with ``.run(stop_event)``)."""
        secrets = self.secrets
        return ContainerWorker(
            self.log,
            self.reads,
            DockerEngine(self.settings, secrets),
            HealthProbe(self.settings, secrets),
            self.activity,
            FollowerTracking(self.log.recorder.datastore, "container-worker"),
            ready_timeout=self.settings.ready_timeout,
            idle_timeout=self.settings.idle_timeout,
            sweep_every=self.settings.sweep_interval,
        )

    def close(self) -> None:
        self.activity.flush()
        self.log.close()


def open_event_log(settings: Settings) -> EventLog:
    """The event log on the configured (or embedded) PostgreSQL, its views current."""
    event_log = EventLog(env=eventsourcing_env(database_url(settings), settings))
    recorder = event_log.recorder
    assert isinstance(recorder, ProjectingRecorder)
    recorder.read_model.ensure_current(event_log.mapper.to_domain_event)
    return event_log


def build(settings: Settings) -> Sandbar:
    event_log = open_event_log(settings)
    recorder = event_log.recorder
    assert isinstance(recorder, ProjectingRecorder)
    datastore = recorder.datastore
    reads = ReadModelQueries(datastore)
    access = Access(reads)
    key = server_key(settings)
    credentials = Credentials(datastore, key, settings.session_ttl)
    accounts = Accounts(
        event_log,
        reads,
        Argon2Passwords(settings),
        credentials,
        LoginThrottle(settings.login_max_failures, settings.login_window),
        RateLimit(settings.registrations_per_window, settings.login_window),
    )
    return Sandbar(
        settings=settings,
        log=event_log,
        view=recorder.read_model,
        reads=reads,
        accounts=accounts,
        workspaces=Workspaces(event_log, reads, access),
        sandboxes=Sandboxes(event_log, reads, access),
        secrets=DerivedSecrets(key),
        activity=ActivityTable(datastore),
    )
