"""Cloud sandboxes as Docker containers, through the ``docker`` SDK (``DOCKER_HOST`` honoured).

One container per sandbox, named ``sandbar-{id}``, with a named volume ``sandbar-home-{id}``
for the agent's home, labels naming the sandbox and workspace, and the design brief's
confinement: all capabilities dropped, no-new-privileges, memory / CPU / pids limits, an
init process, no engine socket inside. Its port is published on 127.0.0.1 only."""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from uuid import UUID

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from application.ports import ContainerVanished, EngineUnavailable, ImageMissing
from infrastructure import agents
from infrastructure.settings import Settings

log = logging.getLogger("sandbar.containers")

LABEL = "sandbar.sandbox"
INSTANCE_LABEL = "sandbar.instance"
T = TypeVar("T")
SIOCGIFADDR = 0x8915  # Linux: an interface's address


def interface_address(name: str) -> str | None:
    """The IPv4 address of this host's network interface ``name``; None if it has none
    (or there is no such interface, or this is not Linux)."""
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def container_name(sandbox_id: UUID) -> str:
    return f"sandbar-{sandbox_id}"


def volume_name(sandbox_id: UUID) -> str:
    return f"sandbar-home-{sandbox_id}"


class DockerEngine:
    def __init__(
        self,
        settings: Settings,
        secrets: agents.DerivedSecrets,
        client_factory: Callable[[], Any] = docker.from_env,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._instance = secrets.instance()
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def _engine(self) -> Iterator[Any]:
        """The SDK client; engine trouble becomes EngineUnavailable with a readable reason."""
        try:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
            yield self._client
        except ImageNotFound as e:
            raise ImageMissing(str(e.explanation or e)) from e
        except (requests.ConnectionError, DockerException) as e:
            if isinstance(e, APIError) and e.status_code and e.status_code < 500:
                raise
            with self._lock:
                self._client = None  # reconnect next time
            raise EngineUnavailable(f"the container engine is unavailable: {_reason(e)}") from e

    def start(self, sandbox_id: UUID, workspace_id: UUID, sandbox_type: str) -> str:
        agent = agents.agent(self._settings, sandbox_type)
        name = container_name(sandbox_id)
        with self._engine() as client:
            # Start first and create only if missing: one engine call on the common path.
            try:
                client.api.start(name)
            except NotFound:
                self._create(client, sandbox_id, workspace_id, sandbox_type, agent)
                try:
                    client.api.start(name)
                except NotFound as e:
                    raise ContainerVanished(name) from e
            try:
                return _published(client.api.inspect_container(name), agent.port)
            except NotFound as e:
                raise ContainerVanished(name) from e

    def _create(
        self,
        client: Any,
        sandbox_id: UUID,
        workspace_id: UUID,
        sandbox_type: str,
        agent: agents.Agent,
    ) -> None:
        s = self._settings
        env = agents.environment(
            s,
            sandbox_type,
            self._secrets.upstream_credential(sandbox_id),
            self._secrets.proxy_token(sandbox_id),
        )
        host_config = client.api.create_host_config(
            binds={volume_name(sandbox_id): {"bind": "/root", "mode": "rw"}},
            port_bindings={agent.port: ("127.0.0.1", None)},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=s.sandbox_memory,
            nano_cpus=int(s.sandbox_cpus * 1e9),
            pids_limit=s.sandbox_pids,
            init=True,
            extra_hosts={"host.docker.internal": "host-gateway"},
        )
        try:
            client.api.create_container(
                agent.image,
                name=container_name(sandbox_id),
                labels={
                    LABEL: str(sandbox_id),
                    INSTANCE_LABEL: self._instance,
                    "sandbar.workspace": str(workspace_id),
                    "sandbar.type": sandbox_type,
                },
                environment=env,
                ports=[agent.port],
                host_config=host_config,
            )
        except ImageNotFound:
            raise ImageMissing(
                f"image {agent.image} is not in the container engine; build it with"
                " `make images` or point the setting at another image"
            ) from None
        except APIError as e:
            if e.status_code != 409:  # 409: created concurrently, which is as good
                raise

    def stop(self, sandbox_id: UUID) -> None:
        with self._engine() as client, suppress(NotFound):
            client.api.stop(container_name(sandbox_id), timeout=self._settings.sandbox_stop_timeout)

    def remove(self, sandbox_id: UUID, *, volume: bool) -> None:
        with self._engine() as client:
            with suppress(NotFound):
                client.api.remove_container(container_name(sandbox_id), force=True)
            if volume:
                with suppress(NotFound):
                    client.api.remove_volume(volume_name(sandbox_id), force=True)

    def is_running(self, sandbox_id: UUID) -> bool:
        with self._engine() as client:
            try:
                info = client.api.inspect_container(container_name(sandbox_id))
            except NotFound:
                return False
            return bool(info["State"]["Running"]) and not info["State"]["Paused"]

    def host_gateway(self) -> str:
        """The host's address on the engine's default bridge: what containers reach as
        ``host.docker.internal`` (EngineUnavailable, saying why, if the engine cannot say)."""
        try:
            with self._engine() as client:
                attrs = client.networks.get("bridge").attrs
            config = attrs["IPAM"]["Config"] or []
            bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name")
        except (APIError, KeyError, TypeError) as e:
            raise EngineUnavailable(f"the engine's bridge network cannot be read: {e}") from e
        gateway = next((c["Gateway"] for c in config if c.get("Gateway")), None)
        # A freshly started engine may list the bridge's subnet without its gateway; the
        # gateway is then the address of the bridge's interface here (docker0, say).
        if gateway is None and bridge:
            gateway = interface_address(bridge)
        if gateway is None:
            raise EngineUnavailable("the engine's bridge network has no gateway address")
        return gateway

    def sandbox_ids(self) -> set[UUID]:
        """Sandboxes with a container of this installation's."""
        with self._engine() as client:
            found = client.containers.list(
                all=True, filters={"label": f"{INSTANCE_LABEL}={self._instance}"}
            )
            ids = set()
            for c in found:
                try:
                    ids.add(UUID(c.labels[LABEL]))
                except (KeyError, ValueError):
                    continue
            return ids


def _published(info: dict[str, Any], port: int) -> str:
    bindings = info["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    for b in bindings:
        if b.get("HostIp") in ("127.0.0.1", "0.0.0.0", ""):  # noqa: S104 - reading, not binding
            return f"127.0.0.1:{b['HostPort']}"
    raise EngineUnavailable(f"the container's port {port} is not published")


def _reason(e: BaseException) -> str:
    text = str(getattr(e, "explanation", None) or e)
    return text.splitlines()[0][:200] if text else type(e).__name__
