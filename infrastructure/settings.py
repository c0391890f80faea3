"""One settings object, read from the environment (``SANDBAR_*``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _read(env: dict[str, str], name: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SystemExit(f"{name} must be {what}, got {raw!r}") from None


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _read(env, name, default, int, "an integer")


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _read(env, name, default, float, "a number")


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    return _read(env, name, default, _boolean, "true or false")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".sandbar")
    secret_key: str | None = None
    base_domain: str = "localhost"
    public_scheme: str = "http"
    cookie_secure: bool = False
    session_ttl_seconds: int = 14 * 24 * 3600
    max_body_bytes: int = 1024 * 1024
    login_max_failures: int = 5
    login_window_seconds: int = 300
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    db_pool_size: int = 10
    db_max_overflow: int = 10
    # Cloud sandboxes.
    worker: bool = True
    opencode_image: str = "sandbar-opencode:latest"
    openclaw_image: str = "sandbar-openclaw:latest"
    sandbox_memory: str = "2g"
    sandbox_cpus: float = 1.0
    sandbox_pids: int = 512
    sandbox_stop_timeout: int = 5
    ready_timeout: int = 120
    idle_timeout: int = 1800
    sweep_interval: float = 30.0
    sandbox_api_url: str = "http://host.docker.internal:8080"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            database_url=env.get("SANDBAR_DATABASE_URL") or None,
            data_dir=Path(env.get("SANDBAR_DATA_DIR") or ".sandbar"),
            secret_key=env.get("SANDBAR_SECRET_KEY") or None,
            base_domain=env.get("SANDBAR_BASE_DOMAIN") or "localhost",
            public_scheme=env.get("SANDBAR_PUBLIC_SCHEME") or "http",
            cookie_secure=_bool(env, "SANDBAR_COOKIE_SECURE", False),
            session_ttl_seconds=_int(env, "SANDBAR_SESSION_TTL", 14 * 24 * 3600),
            max_body_bytes=_int(env, "SANDBAR_MAX_BODY_BYTES", 1024 * 1024),
            login_max_failures=_int(env, "SANDBAR_LOGIN_MAX_FAILURES", 5),
            login_window_seconds=_int(env, "SANDBAR_LOGIN_WINDOW", 300),
            argon2_time_cost=_int(env, "SANDBAR_ARGON2_TIME_COST", 3),
            argon2_memory_kib=_int(env, "SANDBAR_ARGON2_MEMORY_KIB", 65536),
            argon2_parallelism=_int(env, "SANDBAR_ARGON2_PARALLELISM", 4),
            db_pool_size=_int(env, "SANDBAR_DB_POOL_SIZE", 10),
            db_max_overflow=_int(env, "SANDBAR_DB_MAX_OVERFLOW", 10),
            worker=_bool(env, "SANDBAR_WORKER", True),
            opencode_image=env.get("SANDBAR_OPENCODE_IMAGE") or "sandbar-opencode:latest",
            openclaw_image=env.get("SANDBAR_OPENCLAW_IMAGE") or "sandbar-openclaw:latest",
            sandbox_memory=env.get("SANDBAR_SANDBOX_MEMORY") or "2g",
            sandbox_cpus=_float(env, "SANDBAR_SANDBOX_CPUS", 1.0),
            sandbox_pids=_int(env, "SANDBAR_SANDBOX_PIDS", 512),
            sandbox_stop_timeout=_int(env, "SANDBAR_SANDBOX_STOP_TIMEOUT", 5),
            ready_timeout=_int(env, "SANDBAR_READY_TIMEOUT", 120),
            idle_timeout=_int(env, "SANDBAR_IDLE_TIMEOUT", 1800),
            sweep_interval=_float(env, "SANDBAR_SWEEP_INTERVAL", 30.0),
            sandbox_api_url=(
                env.get("SANDBAR_SANDBOX_API_URL") or "http://host.docker.internal:8080"
            ).rstrip("/"),
        )
