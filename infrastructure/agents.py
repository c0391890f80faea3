"""What Sandbar knows about each agent program: its image, port, health check, and how
its credentials are handed to it and presented to it.

Per sandbox, two secrets are derived from the server key with HMAC (so none is stored and
each can be derived again by the proxies): the agent's own upstream credential (opencode's
server password, openclaw's gateway token) and the sandbox's token for Sandbar's Anthropic
proxy. The real Anthropic key never reaches a container."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from uuid import UUID

from domain.sandboxes import PORTS, SandboxType
from infrastructure.settings import Settings


class DerivedSecrets:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _derive(self, purpose: str, sandbox_id: UUID) -> str:
        mac = hmac.new(self._key, f"{purpose}:{sandbox_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def instance(self) -> str:
        """A name for this installation (same key, same name), so that two Sandbars
        sharing one container engine never touch each other's containers."""
        return hmac.new(self._key, b"instance", hashlib.sha256).hexdigest()[:16]

    def upstream_credential(self, sandbox_id: UUID) -> str:
        return self._derive("upstream", sandbox_id)

    def proxy_token(self, sandbox_id: UUID) -> str:
        """``sbp_{sandbox id hex}_{mac}``: names its sandbox, checkable without storage."""
        return f"sbp_{sandbox_id.hex}_{self._derive('anthropic-proxy', sandbox_id)}"

    def proxy_token_sandbox(self, token: str) -> UUID | None:
        """The sandbox a proxy token belongs to, if it is genuine (constant-time check)."""
        parts = token.split("_", 2)  # (the mac may hold "_" too)
        if len(parts) != 3 or parts[0] != "sbp":
            return None
        try:
            sandbox_id = UUID(hex=parts[1])
        except ValueError:
            return None
        expected = self.proxy_token(sandbox_id).encode()
        # (As bytes: compare_digest refuses str with characters beyond ASCII.)
        return sandbox_id if hmac.compare_digest(token.encode(), expected) else None


@dataclass(frozen=True)
class Agent:
    image: str
    port: int
    health_path: str


def agent(settings: Settings, sandbox_type: str) -> Agent:
    kind = SandboxType(sandbox_type)
    if kind is SandboxType.opencode:
        return Agent(settings.opencode_image, PORTS[kind], "/global/health")
    return Agent(settings.openclaw_image, PORTS[kind], "/healthz")


def upstream_headers(sandbox_type: str, credential: str) -> dict[str, str]:
    """How Sandbar presents the agent's credential to it."""
    if SandboxType(sandbox_type) is SandboxType.opencode:
        basic = base64.b64encode(f"opencode:{credential}".encode()).decode()
        return {"authorization": f"Basic {basic}"}
    return {"authorization": f"Bearer {credential}"}


def environment(
    settings: Settings, sandbox_type: str, credential: str, proxy_token: str
) -> dict[str, str]:
    """The container's environment: its own credential and the Anthropic proxy settings."""
    proxy = f"{settings.sandbox_api_url}/proxy/anthropic"
    if SandboxType(sandbox_type) is SandboxType.opencode:
        config = {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                "anthropic": {"options": {"apiKey": proxy_token, "baseURL": f"{proxy}/v1"}}
            },
            "model": "anthropic/claude-sonnet-4-5",
        }
        return {
            "OPENCODE_SERVER_PASSWORD": credential,
            "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        }
    return {
        "OPENCLAW_GATEWAY_TOKEN": credential,
        "ANTHROPIC_API_KEY": proxy_token,
        "ANTHROPIC_BASE_URL": proxy,
    }
