"""The composition root: settings in, a wired Sandbar out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from application.access import Access
from application.accounts import Accounts
from application.container_worker import ContainerWorker
from application.eventlog import EventLog
from application.local_agents import LocalAgents
from application.opening import Opening
from application.sandboxes import Sandboxes
from application.sign_in import ExternalSignIn
from application.throttle import LoginThrottle, RateLimit
from application.usage import Usage
from application.workspace_log import WorkspaceLog
from application.workspaces import Workspaces
from infrastructure import sign_in_providers
from infrastructure.activity import ActivityTable
from infrastructure.agent_codes import AgentCredentials
from infrastructure.agents import DerivedSecrets
from infrastructure.changes import ChangeFeed
from infrastructure.credentials import Credentials
from infrastructure.database import database_url, schema_lock, server_key
from infrastructure.eventstore import ProjectingRecorder
from infrastructure.grants import ACCESS_CHANNEL, Grants
from infrastructure.passwords import Argon2Passwords
from infrastructure.probe import HealthProbe
from infrastructure.settings import Settings
from infrastructure.sign_in_states import SignInStates
from infrastructure.tracking import FollowerTracking
from infrastructure.usage import UsageTable
from interfaces.addresses import Addresses
from interfaces.event_log import open_event_log
from interfaces.readiness import Readiness
from projections.queries import ReadModelQueries
from projections.view import ReadModelView
from projections.workspace_log_queries import WorkspaceLogQueries

if TYPE_CHECKING:  # (the proxy's modules are loaded by a server alone)
    from interfaces.proxy.anthropic import AnthropicApi
    from interfaces.proxy.directory import Directory
    from interfaces.proxy.gate import Gate
    from interfaces.tunnel.server import Tunnels


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
    grants: Grants
    opening: Opening
    changes: ChangeFeed
    addresses: Addresses
    usage: Usage
    sign_in: ExternalSignIn
    local_agents: LocalAgents
    workspace_log: WorkspaceLog
    readiness: Readiness  # whether the views are caught up (after an upgrade, not yet)

    def container_worker(self) -> ContainerWorker:
        """The process manager for cloud sandboxes (run it with ``.run(stop_event)``)."""
        # (the docker SDK is loaded only by a process that runs the worker)
        from infrastructure.containers import DockerEngine

        secrets = self.secrets
        recorder = self.log.recorder
        assert isinstance(recorder, ProjectingRecorder)
        return ContainerWorker(
            self.log,
            self.reads,
            DockerEngine(self.settings, secrets),
            HealthProbe(self.settings, secrets),
            self.activity,
            FollowerTracking(recorder.datastore, "container-worker"),
            ready_timeout=self.settings.ready_timeout,
            idle_timeout=self.settings.idle_timeout,
            sweep_every=self.settings.sweep_interval,
        )

    def gate(self) -> Gate:
        """The sandbox proxy's decision per request, given what it reads and does."""
        from interfaces.proxy.directory import Directory
        from interfaces.proxy.gate import Gate

        settings = self.settings
        return Gate(
            Directory(self.reads, self.grants, self.changes, lambda: self.readiness.ready),
            self.addresses,
            note=self.activity.note,
            upstream_secret=self.secrets.upstream_credential,
            redeem=self.opening.redeem,
            resume=self.sandboxes.resume,
            public_scheme=settings.public_scheme,
            grant_ttl=settings.grant_ttl,
            cookie_secure=settings.cookie_secure,
            open_wait=settings.open_wait,
        )

    def anthropic_api(self, directory: Directory) -> AnthropicApi:
        """The Anthropic proxy, reading routes through the sandbox proxy's ``directory``
        (one cache for both). A bad ``SANDBAR_ANTHROPIC_EXTRA_PATHS`` stops start-up."""
        from interfaces.proxy.anthropic import AnthropicApi
        from interfaces.proxy.anthropic_admission import Admission
        from interfaces.proxy.anthropic_paths import Endpoints

        settings = self.settings
        try:
            endpoints = Endpoints(settings.anthropic_extra_paths)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        admission = Admission(
            directory,
            self.usage,
            self.secrets.proxy_token_sandbox,
            self.activity.note,
            key_configured=bool(settings.anthropic_api_key),
            max_body=settings.anthropic_max_body,
        )
        return AnthropicApi(
            admission,
            endpoints,
            base_url=settings.anthropic_base_url,
            key=settings.anthropic_api_key or "",
            timeout=settings.anthropic_timeout,
        )

    def tunnels(self) -> Tunnels:
        """The local agents' tunnels of a server process, given what they use. Timings
        that cannot work together stop start-up."""
        from interfaces.tunnel.link import Heartbeat
        from interfaces.tunnel.server import Timing, Tunnels

        settings = self.settings
        try:
            timing = Timing(
                Heartbeat(settings.tunnel_ping_every, settings.tunnel_dead_after),
                stall_after=settings.tunnel_stall_after,
                grace=settings.tunnel_offline_grace,
            )
        except ValueError as e:
            raise SystemExit(f"SANDBAR_TUNNEL_*: {e}") from None
        trusted = (a.strip() for a in settings.trusted_proxies.split(","))
        return Tunnels(
            self.local_agents,
            self.changes,
            timing=timing,
            trusted_proxies=[a for a in trusted if a],
            ready=lambda: self.readiness.ready,
        )

    def close(self) -> None:
        self.changes.stop()
        self.activity.flush()
        self.log.close()


def build(settings: Settings) -> Sandbar:
    url = database_url(settings)
    # Tables are made with CREATE ... IF NOT EXISTS, which is not safe when two processes
    # do it at once on a new database: one process at a time sets up.
    with schema_lock(url):
        return _build(settings, url)


def _build(settings: Settings, url: str) -> Sandbar:
    event_log = open_event_log(settings, url)
    recorder = event_log.recorder
    assert isinstance(recorder, ProjectingRecorder)
    datastore = recorder.datastore
    reads = ReadModelQueries(datastore)
    access = Access(reads)
    key = server_key(settings)
    credentials = Credentials(datastore, key, settings.session_ttl)
    grants = Grants(datastore, key)
    changes = ChangeFeed(url, [recorder.channel_name, ACCESS_CHANNEL])
    recorder.committed.append(changes.bump)
    credentials.revoked.append(changes.bump)
    sandboxes = Sandboxes(event_log, reads, access)
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
        readiness=Readiness(recorder.read_model, event_log.mapper.to_domain_event),
        reads=reads,
        accounts=accounts,
        workspaces=Workspaces(event_log, reads, access, grants),
        sandboxes=sandboxes,
        secrets=DerivedSecrets(key),
        activity=ActivityTable(datastore),
        grants=grants,
        opening=Opening(
            sandboxes,
            access,
            credentials,
            grants,
            ticket_ttl=settings.ticket_ttl,
            grant_ttl=settings.grant_ttl,
            token_ttl=settings.access_token_ttl,
        ),
        changes=changes,
        addresses=Addresses(settings),
        local_agents=LocalAgents(
            event_log,
            reads,
            access,
            sandboxes,
            AgentCredentials(datastore, key),
            RateLimit(settings.agent_registrations_per_window, settings.login_window),
            code_ttl=settings.agent_code_ttl,
        ),
        sign_in=ExternalSignIn(
            event_log,
            reads,
            credentials,
            SignInStates(datastore, key, settings.sign_in_ttl),
            sign_in_providers.providers(settings),
            link_verified_email=settings.oidc_link_verified_email,
            provider_errors=(sign_in_providers.ProviderError,),
        ),
        usage=Usage(
            event_log,
            reads,
            access,
            UsageTable(datastore, url, changes),
            default_requests=settings.anthropic_daily_requests,
            default_tokens=settings.anthropic_daily_tokens,
        ),
        workspace_log=WorkspaceLog(WorkspaceLogQueries(datastore), access),
    )
