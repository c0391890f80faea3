"""The host's side of a sandbox's confinement: from a sandbox's network, only Sandbar's
port on the host answers.

Each sandbox has a bridge network of its own (``infrastructure/containers.py``), so the
engine's own rules already drop traffic between two sandboxes' networks (they are
forwarded, and Docker isolates bridge networks from each other). What they do not cover is
the host itself: a packet from a container to any of the host's addresses (its gateway on
the bridge, ``host.docker.internal``, the host's other interfaces) is delivered locally,
through the INPUT chain, which Docker leaves open; ``DOCKER-USER`` sits in FORWARD and
never sees it. So Sandbar keeps a chain of its own, ``SANDBAR-SANDBOXES``, which INPUT
sends every packet arriving on a sandbox bridge (interfaces named ``sbx...``) to:

    -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT     answers to what the host opened
    -i sbx<id> -d <gateway> -p tcp --dport <port> -j ACCEPT   one per sandbox (its comment
                                                              names installation and sandbox)
    -p tcp -j REJECT --reject-with tcp-reset                  everything else, refused at once
    -j REJECT

The catch-all comes first in time (a bridge without its own rule reaches nothing on the
host), the per-sandbox rule is removed with its network, and the sweep removes the rules
of sandboxes that are gone. This needs ``iptables`` and the right to use it (Sandbar as
root where the engine runs); without them a sandbox is refused a start rather than run
unconfined, unless ``SANDBAR_SANDBOX_FIREWALL=false`` says the operator guards the host
another way."""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

log = logging.getLogger("sandbar.firewall")

CHAIN = "SANDBAR-SANDBOXES"
BRIDGE_PREFIX = "sbx"
LOCK = Path("/run/lock/sandbar-firewall.lock")
BASE = [
    ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-j", "REJECT"],
]
JUMP = ["-i", f"{BRIDGE_PREFIX}+", "-j", CHAIN]


class FirewallUnavailable(Exception):
    """The host's rules cannot be set; the message says why and what to do."""


def bridge_name(sandbox_id: UUID) -> str:
    """The sandbox network's bridge interface: ``sbx`` and 12 hex digits of its id (an
    interface name holds at most 15 characters)."""
    return f"{BRIDGE_PREFIX}{sandbox_id.hex[:12]}"


class HostFirewall:
    def __init__(self, instance: str, iptables: str = "iptables") -> None:
        self._instance = instance
        self._iptables = iptables
        self._lock = threading.Lock()

    def allow(self, sandbox_id: UUID, gateway: str | None, port: int) -> None:
        """Let the sandbox's bridge reach ``gateway:port`` on the host (any of the host's
        addresses when ``gateway`` is None), and nothing else there."""
        rule = self._rule(sandbox_id, gateway, port)
        with self._locked():
            self._ensure_base()
            for stale in self._rules_of(sandbox_id):
                if stale != rule:
                    self._run("-D", CHAIN, *stale)
            if not self._has(CHAIN, rule):
                self._run("-I", CHAIN, "2", *rule)

    def forget(self, sandbox_id: UUID) -> None:
        """Remove the sandbox's own rule (the catch-all stays for every sandbox bridge)."""
        with self._locked():
            for rule in self._rules_of(sandbox_id):
                self._run("-D", CHAIN, *rule)

    def sandbox_ids(self) -> set[UUID]:
        """The sandboxes of this installation that have a rule."""
        with self._locked():
            return {sid for sid, _ in self._listed()}

    def _rule(self, sandbox_id: UUID, gateway: str | None, port: int) -> list[str]:
        rule = ["-d", f"{gateway}/32"] if gateway else []
        rule += ["-i", bridge_name(sandbox_id)]
        comment = f"sandbar {self._instance} {sandbox_id}"
        port_match = ["-p", "tcp", "-m", "tcp", "--dport", str(port)]
        return [*rule, *port_match, "-m", "comment", "--comment", comment, "-j", "ACCEPT"]

    def _ensure_base(self) -> None:
        if self._run("-S", CHAIN, check=False).returncode != 0:
            self._run("-N", CHAIN)
        for i, rule in enumerate(BASE):
            if not self._has(CHAIN, rule):
                # The answers rule goes first; the refusals stay last.
                self._run(*(("-I", CHAIN, "1") if i == 0 else ("-A", CHAIN)), *rule)
        if not self._has("INPUT", JUMP):
            self._run("-I", "INPUT", "1", *JUMP)

    def _rules_of(self, sandbox_id: UUID) -> list[list[str]]:
        return [rule for sid, rule in self._listed() if sid == sandbox_id]

    def _listed(self) -> list[tuple[UUID, list[str]]]:
        listing = self._run("-S", CHAIN, check=False)
        if listing.returncode != 0:
            return []
        found = []
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:2] != ["-A", CHAIN] or "--comment" not in words:
                continue
            comment = words[words.index("--comment") + 1].split()
            if len(comment) == 3 and comment[:2] == ["sandbar", self._instance]:
                try:
                    found.append((UUID(comment[2]), words[2:]))
                except ValueError:
                    continue
        return found

    def _has(self, chain: str, rule: list[str]) -> bool:
        return self._run("-C", chain, *rule, check=False).returncode == 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's lock and a file lock, so two Sandbar processes on one host do
        not lay the shared rules twice."""
        with self._lock:
            try:
                LOCK.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                yield  # no lock file here: this process's lock still holds
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self._iptables)
        if binary is None:
            raise FirewallUnavailable(
                f"{self._iptables} is not installed, so the sandbox's network cannot be"
                " confined (install iptables, or set SANDBAR_SANDBOX_FIREWALL=false if the"
                " host is guarded another way)"
            )
        done = subprocess.run(  # noqa: S603 - our own arguments, no shell
            [binary, "-w", "10", *args], capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise FirewallUnavailable(
                f"the host's firewall rules for sandboxes cannot be set ({why[0]}): Sandbar"
                " must run as root where the container engine runs, or set"
                " SANDBAR_SANDBOX_FIREWALL=false if the host is guarded another way"
            )
        return done
