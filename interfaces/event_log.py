"""The event log alone, its views brought up to date: for the commands that only read it
(``sandbar audit``), which then start without the rest of Sandbar's imports (the web
framework, the engine's client, the sign-in providers': most of their start-up time)."""

from __future__ import annotations

from application.eventlog import EventLog
from infrastructure.database import database_url, eventsourcing_env
from infrastructure.eventstore import ProjectingRecorder
from infrastructure.settings import Settings


def open_event_log(settings: Settings, url: str | None = None) -> EventLog:
    """The event log on the configured (or embedded) PostgreSQL, its views of this code's
    version: current, or (after a change of version) to be rebuilt by a catch-up."""
    event_log = EventLog(env=eventsourcing_env(url or database_url(settings), settings))
    recorder = event_log.recorder
    assert isinstance(recorder, ProjectingRecorder)
    recorder.read_model.ensure_current(event_log.mapper.to_domain_event)
    return event_log
