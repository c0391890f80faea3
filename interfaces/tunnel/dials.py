"""Who may dial a tunnel now. Each dial that is let through costs a token check in the
database and, once accepted, the sandbox's state; an agent is hostile as often as not (any
user can register one), so both are bounded:

- wrong tokens (or unknown sandboxes) per client address: ``WRONG_BURST`` at once, then one
  every ``WRONG_EVERY`` seconds; past that the address gets 429 without a look at the
  database. They are logged once per address and minute, and the rest counted in one
  line a minute (a loop of wrong tokens wrote a WARNING per try);
- accepted dials per sandbox: each one within ``RESET_AFTER`` seconds of the last doubles
  the wait before the next (from ``REDIAL_START`` to ``REDIAL_CAP``), so a valid token
  redialled in a loop is let through a few times a minute at most. Only dials with a
  valid token count: a stranger who knows a sandbox's id cannot hold its agent back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from uuid import UUID

log = logging.getLogger("interfaces.tunnel.server")

WRONG_BURST = 10
WRONG_EVERY = 6.0  # seconds: ten a minute, sustained
REDIAL_START = 1.0
REDIAL_CAP = 30.0
RESET_AFTER = 2 * REDIAL_CAP  # seconds without a dial: the next one starts anew
LOG_EVERY = 60.0
MAX_KEYS = 100_000  # addresses or sandboxes remembered (idle ones go first)


class Dials:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Per client address: (tokens left, when counted).
        self._wrong: dict[str, tuple[float, float]] = {}
        # Per sandbox: (last accepted dial, current wait, next allowed dial).
        self._redials: dict[UUID, tuple[float, float, float]] = {}
        self._logged: dict[str, float] = {}  # address -> when its refusal was last logged
        self._unlogged = 0  # refusals not logged since the last summary
        self._summary_at = clock()

    def client_wait(self, client: str) -> float:
        """Seconds before ``client`` may try a token again (0: now)."""
        tokens, _ = self._tokens(client)
        return 0.0 if tokens >= 1 else (1 - tokens) * WRONG_EVERY

    def wrong_token(self, client: str, sandbox_id: UUID) -> None:
        """A dial refused for its sandbox or token: counted against the address."""
        tokens, now = self._tokens(client)
        self._wrong.pop(client, None)  # (to the end: the oldest go first)
        self._wrong[client] = (max(tokens - 1, 0.0), now)
        self._trim(self._wrong)
        self.refused(client, sandbox_id)

    def refused(self, client: str, sandbox_id: UUID) -> None:
        """Logged once per address and minute; the rest counted in a summary line."""
        now = self._clock()
        if now - self._logged.get(client, -LOG_EVERY) >= LOG_EVERY:
            self._logged.pop(client, None)
            self._logged[client] = now
            self._trim(self._logged)
            log.warning(
                "refused a tunnel for sandbox %s from %s: unknown sandbox or token"
                " (more from there are counted, not logged, for a minute)",
                sandbox_id,
                client,
            )
        else:
            self._unlogged += 1
        if self._unlogged and now - self._summary_at >= LOG_EVERY:
            log.warning(
                "refused %d more tunnel dials (unknown sandbox or token, or too many"
                " tries from one address) in the last %.0f s",
                self._unlogged,
                now - self._summary_at,
            )
            self._unlogged = 0
            self._summary_at = now

    def sandbox_wait(self, sandbox_id: UUID) -> float:
        """Seconds before the sandbox's agent may dial again (0: now)."""
        entry = self._redials.get(sandbox_id)
        return 0.0 if entry is None else max(entry[2] - self._clock(), 0.0)

    def dialed(self, sandbox_id: UUID) -> None:
        """An accepted dial: the next one waits longer if it comes soon."""
        now = self._clock()
        last, wait, _ = self._redials.get(sandbox_id, (-RESET_AFTER, 0.0, 0.0))
        wait = REDIAL_START if now - last >= RESET_AFTER else min(wait * 2, REDIAL_CAP)
        self._redials.pop(sandbox_id, None)
        self._redials[sandbox_id] = (now, wait, now + wait)
        self._trim(self._redials)

    def _tokens(self, client: str) -> tuple[float, float]:
        now = self._clock()
        tokens, at = self._wrong.get(client, (float(WRONG_BURST), now))
        return min(float(WRONG_BURST), tokens + (now - at) / WRONG_EVERY), now

    @staticmethod
    def _trim(table: dict) -> None:  # type: ignore[type-arg]
        """Forget the oldest entries (insertion order) past MAX_KEYS."""
        while len(table) > MAX_KEYS:
            del table[next(iter(table))]
