"""One settings object, read from the environment: each field ``name`` is set by the
variable ``SANDBAR_NAME`` (upper case), parsed by the field's type."""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


# How to read each type of field, and what to call it in an error; bool before int.
_READERS: list[tuple[type, Callable[[str], Any], str]] = [
    (bool, _boolean, "true or false"),
    (int, int, "an integer"),
    (float, float, "a number"),
    (Path, Path, "a path"),
    (str, str, "text"),
]


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".sandbar")
    secret_key: str | None = None
    base_domain: str = "localhost"
    public_scheme: str = "http"
    cookie_secure: bool = False
    session_ttl: int = 14 * 24 * 3600  # seconds
    max_body_bytes: int = 1024 * 1024
    login_max_failures: int = 5
    login_window: int = 300  # seconds
    registrations_per_window: int = 30  # per client address, in that window
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
    sandbox_firewall: bool = True  # host rules: a sandbox reaches only Sandbar's port there
    sandbox_subnets: str = "10.213.0.0/16"  # a /29 of it for each sandbox's own network
    # Opening sandboxes in the browser (the subdomain proxy).
    public_url: str = ""  # the API host as browsers reach it; default: base domain, same port
    ticket_ttl: int = 60  # seconds a one-time ticket lives
    grant_ttl: int = 12 * 3600  # seconds a sandbox host's cookie lives
    access_token_ttl: int = 30 * 24 * 3600  # seconds a sandbox access token lives
    open_wait: int = 60  # seconds a request to a paused sandbox waits for it to resume
    upstream_timeout: float = 300.0  # seconds to wait for an agent's response headers
    trusted_proxies: str = ""  # comma-separated addresses whose X-Forwarded-* are kept
    # What one client may hold of the server (every connection to Sandbar's port).
    header_timeout: float = 15.0  # seconds a request head may take to arrive
    body_timeout: float = 30.0  # seconds a request body may stall (no byte) before close
    max_connections: int = 10000  # open at once; past it the oldest idle one is closed
    max_connections_per_client: int = 1000  # per client address (trusted proxies: no cap)
    max_pipelined: int = 32  # requests queued on one connection before reading pauses
    shutdown_grace: float = 20.0  # seconds a stop waits for requests in flight, then cuts
    # The Anthropic API proxy.
    anthropic_api_key: str | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_max_body: int = 10 * 1024 * 1024
    anthropic_timeout: float = 600.0  # seconds to wait for the API's response headers
    anthropic_daily_requests: int | None = None  # default per-workspace limits (None: none)
    anthropic_daily_tokens: int | None = None
    anthropic_extra_paths: str = ""  # more "METHOD /path" calls to forward (comma-separated)
    # Sign-in with any OpenID Connect provider, and with GitHub.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid email profile"
    oidc_label: str = "Single sign-on"
    oidc_link_verified_email: bool = False  # sign in to the account with that email
    github_client_id: str | None = None
    github_client_secret: str | None = None
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105 - a URL
    github_api_url: str = "https://api.github.com"
    sign_in_ttl: int = 600  # seconds a sign-in may take at the provider
    # Local agents.
    agent_code_ttl: int = 600  # seconds a one-time agent code is good for
    agent_registrations_per_window: int = 30  # per client address, per login_window
    # Local agents' tunnels (``sandbar agent connect`` reads the same variables).
    tunnel_ping_every: float = 5.0  # seconds between heartbeat PINGs, at both ends
    tunnel_dead_after: float = 15.0  # seconds without a PING answered: the tunnel is dead
    tunnel_stall_after: float = 15.0  # seconds an agent may take nothing it is sent
    tunnel_offline_grace: float = 3.0  # seconds away before the sandbox is recorded offline
    tunnel_backoff_cap: float = 30.0  # the agent's longest wait between two dials

    def __post_init__(self) -> None:
        object.__setattr__(self, "sandbox_api_url", self.sandbox_api_url.rstrip("/"))
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "anthropic_base_url", self.anthropic_base_url.rstrip("/"))
        object.__setattr__(self, "base_domain", self.base_domain.strip(".").lower())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in ``env`` (default: the process environment); an unset or empty
        variable keeps the default, an unreadable one stops with a message naming it."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"SANDBAR_{f.name.upper()}"
            raw = env.get(name, "").strip()
            if not raw:
                continue
            hint = hints[f.name]
            types = typing.get_args(hint) or (hint,)
            read, what = next((r, w) for t, r, w in _READERS if t in types)
            try:
                values[f.name] = read(raw)
            except ValueError:
                raise SystemExit(f"{name} must be {what}, got {raw!r}") from None
        return cls(**values)
