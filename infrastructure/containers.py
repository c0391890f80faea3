"""Cloud sandboxes as Docker containers, through the ``docker`` SDK (``DOCKER_HOST`` honoured).

One container per sandbox, named ``sandbar-{id}``, with a named volume ``sandbar-home-{id}``
for the agent's home, labels naming the sandbox and workspace, and the confinement of
docs/design.md: all capabilities dropped, no-new-privileges, memory / CPU / pids limits, an
init process, no engine socket inside. Its port is published on 127.0.0.1 only.

Each sandbox also has a bridge network of its own, ``sandbar-net-{id}`` (bridge ``sbx...``,
a /29 of ``SANDBAR_SANDBOX_SUBNETS``, so thousands fit where the engine's own pools give
about thirty), which the engine isolates from every other network; the host's rules
(``infrastructure/firewall.py``) let it reach only Sandbar's port on the host. Network,
volume and rule carry the sandbox's labels, so the sweep finds and removes them with it."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import IPAMConfig, IPAMPool

from application.ports import ContainerVanished, EngineUnavailable, ImageMissing, StartRefused
from infrastructure import agents
from infrastructure.firewall import FirewallUnavailable, HostFirewall, bridge_name
from infrastructure.settings import Settings

log = logging.getLogger("sandbar.containers")

LABEL = "sandbar.sandbox"
INSTANCE_LABEL = "sandbar.instance"
T = TypeVar("T")
SIOCGIFADDR = 0x8915  # Linux: an interface's address
SUBNET_PREFIX = 29  # each sandbox's network: a gateway, the container, room to spare
SUBNET_TRIES = 64  # subnets tried (from one the id picks) before giving up
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
IPV6 = Path("/proc/sys/net/ipv6")


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


def network_name(sandbox_id: UUID) -> str:
    return f"sandbar-net-{sandbox_id}"


def engine_down(raw: str) -> EngineUnavailable:
    """No engine answers: what is wrong and what to do, in a user's words (this is what a
    failed sandbox's ``error`` says); the client's own text is kept for the log."""
    where = os.environ.get("DOCKER_HOST") or f"{DEFAULT_ENGINE} (DOCKER_HOST is not set)"
    return EngineUnavailable(
        f"no container engine answers at {where}: start Docker there, or start a private"
        " engine with `scripts/engine.sh start DIR` and run Sandbar with"
        " DOCKER_HOST=unix://DIR/docker.sock; then retry the sandbox",
        detail=raw,
    )


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
        self._firewall = HostFirewall(self._instance) if settings.sandbox_firewall else None
        self._gateway: str | None = None

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
            if isinstance(e, APIError):  # it answered, with an error of its own
                raise EngineUnavailable(
                    f"the container engine failed: {_reason(e)} (see the engine's log)",
                    detail=_reason(e),
                ) from e
            raise engine_down(_reason(e)) from e

    def start(self, sandbox_id: UUID, workspace_id: UUID, sandbox_type: str) -> str:
        agent = agents.agent(self._settings, sandbox_type)
        name = container_name(sandbox_id)
        with self._engine() as client:
            network_made = self._network(client, sandbox_id, workspace_id)
            self._confine(sandbox_id)  # before anything runs on that network
            try:
                mode = client.api.inspect_container(name)["HostConfig"]["NetworkMode"]
            except NotFound:
                mode = None
            if mode is not None and (network_made or mode != network_name(sandbox_id)):
                # Made on a network that is gone (or before each sandbox had its own):
                # made anew, on its own network; the home volume stays.
                client.api.remove_container(name, force=True)
                mode = None
            if mode is None:
                self._create(client, sandbox_id, workspace_id, sandbox_type, agent)
            try:
                client.api.start(name)
                return _published(client.api.inspect_container(name), agent.port)
            except NotFound as e:
                raise ContainerVanished(name) from e

    def _network(self, client: Any, sandbox_id: UUID, workspace_id: UUID) -> bool:
        """Make the sandbox's own network if it has none; whether it was made now."""
        name = network_name(sandbox_id)
        try:
            client.api.inspect_network(name)
            return False
        except NotFound:
            pass
        try:
            pool = ipaddress.IPv4Network(self._settings.sandbox_subnets)
        except ValueError:
            pool = None
        if pool is None or pool.prefixlen > SUBNET_PREFIX:
            raise StartRefused(
                f"SANDBAR_SANDBOX_SUBNETS ({self._settings.sandbox_subnets}) must be an IPv4"
                f" network of at least a /{SUBNET_PREFIX}, such as 10.213.0.0/16"
            )
        subnets = list(pool.subnets(new_prefix=SUBNET_PREFIX))
        first = sandbox_id.int % len(subnets)
        for i in range(min(SUBNET_TRIES, len(subnets))):
            subnet = subnets[(first + i) % len(subnets)]
            try:
                client.api.create_network(
                    name,
                    driver="bridge",
                    options={
                        "com.docker.network.bridge.name": bridge_name(sandbox_id),
                        "com.docker.network.bridge.enable_icc": "false",
                    },
                    ipam=IPAMConfig(
                        pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))]
                    ),
                    labels=self._labels(sandbox_id, workspace_id),
                    check_duplicate=True,
                )
                return True
            except APIError as e:
                text = str(e.explanation or e)
                if e.status_code == 409 or "already exists" in text:
                    return False  # made meanwhile by another call: as good
                if "overlap" not in text:
                    raise
        raise StartRefused(
            f"no free subnet for the sandbox's network in SANDBAR_SANDBOX_SUBNETS ({pool})"
        )

    def _confine(self, sandbox_id: UUID) -> None:
        """The host's rule that lets the sandbox reach Sandbar's port there, and only it."""
        if self._firewall is None:
            return
        target = urlsplit(self._settings.sandbox_api_url)
        port = target.port or (443 if target.scheme == "https" else 80)
        gateway: str | None = None
        if target.hostname == "host.docker.internal":
            if self._gateway is None:
                self._gateway = self.host_gateway()
            gateway = self._gateway
        else:
            try:
                gateway = str(ipaddress.ip_address(target.hostname or ""))
            except ValueError:
                gateway = None  # a name: whichever host address it is, that port only
        try:
            self._firewall.allow(sandbox_id, gateway, port)
        except FirewallUnavailable as e:
            raise StartRefused(str(e)) from e

    def _labels(self, sandbox_id: UUID, workspace_id: UUID) -> dict[str, str]:
        return {
            LABEL: str(sandbox_id),
            INSTANCE_LABEL: self._instance,
            "sandbar.workspace": str(workspace_id),
        }

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
            network_mode=network_name(sandbox_id),
            # Its network is IPv4 only: no link-local IPv6 to the host either (where this
            # kernel has IPv6 at all: the setting does not exist otherwise).
            sysctls={"net.ipv6.conf.all.disable_ipv6": "1"} if IPV6.exists() else None,
            port_bindings={agent.port: ("127.0.0.1", None)},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=s.sandbox_memory,
            nano_cpus=int(s.sandbox_cpus * 1e9),
            pids_limit=s.sandbox_pids,
            init=True,
            extra_hosts={"host.docker.internal": "host-gateway"},
        )
        labels = self._labels(sandbox_id, workspace_id)
        try:
            client.api.create_volume(volume_name(sandbox_id), labels=labels)
        except APIError as e:
            if e.status_code != 409:  # 409: there already, which is as good
                raise
        try:
            client.api.create_container(
                agent.image,
                name=container_name(sandbox_id),
                labels={**labels, "sandbar.type": sandbox_type},
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
        """Remove the container; with ``volume``, everything else of the sandbox too: its
        home, its network and the host's rule for it."""
        with self._engine() as client:
            with suppress(NotFound):
                client.api.remove_container(container_name(sandbox_id), force=True)
            if volume:
                with suppress(NotFound):
                    client.api.remove_volume(volume_name(sandbox_id), force=True)
                with suppress(NotFound):
                    client.api.remove_network(network_name(sandbox_id))
        if volume and self._firewall is not None:
            try:
                self._firewall.forget(sandbox_id)
            except FirewallUnavailable as e:
                log.warning("the host's rule for sandbox %s stays: %s", sandbox_id, e)

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
        """Sandboxes that hold something of this installation's: a container, a home
        volume, a network or a rule on the host."""
        ours = {"label": f"{INSTANCE_LABEL}={self._instance}"}
        with self._engine() as client:
            labelled = [
                *(c["Labels"] for c in client.api.containers(all=True, filters=ours)),
                *(n["Labels"] for n in client.api.networks(filters=ours)),
                *(v["Labels"] for v in client.api.volumes(filters=ours)["Volumes"] or []),
            ]
        ids = set()
        for labels in labelled:
            try:
                ids.add(UUID((labels or {})[LABEL]))
            except (KeyError, ValueError):
                continue
        if self._firewall is not None:
            with suppress(FirewallUnavailable):  # then no rule could have been laid either
                ids |= self._firewall.sandbox_ids()
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
