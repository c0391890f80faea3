"""Is the agent up? Polls its health check with short timeouts: a request sent to opencode
just as it starts listening can hang, so each try gives up after two seconds."""

from __future__ import annotations

import time
from uuid import UUID

import httpx

from infrastructure import agents
from infrastructure.settings import Settings


class HealthProbe:
    def __init__(self, settings: Settings, secrets: agents.DerivedSecrets) -> None:
        self._settings = settings
        self._secrets = secrets

    def wait_ready(self, sandbox_type: str, address: str, sandbox_id: UUID, timeout: float) -> bool:
        agent = agents.agent(self._settings, sandbox_type)
        credential = self._secrets.upstream_credential(sandbox_id)
        headers = agents.upstream_headers(sandbox_type, credential)
        url = f"http://{address}{agent.health_path}"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, headers=headers) as client:
            while True:
                try:
                    if client.get(url).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
