"""systemd's notify protocol (sd_notify), without a dependency: READY, WATCHDOG pings, STOPPING.

Under a unit with `Type=notify` and `WatchdogSec=`, systemd passes `$NOTIFY_SOCKET` (a unix
datagram socket; a leading `@` is the abstract namespace) and `$WATCHDOG_USEC`. The detect-track
loop calls `Watchdog.tick()` every turn; it pings at most every `WATCHDOG_USEC / 3` (or every
`DEFAULT_EVERY_S` when systemd asks for no watchdog), so a loop that hangs (a stuck camera
read, a wedged detector) stops the pings and systemd restarts the agent. Without
`$NOTIFY_SOCKET` (a shell, the tests, Docker) every call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)

DEFAULT_EVERY_S = 5.0


class Watchdog:
    def __init__(self, address: str | None, every_s: float = DEFAULT_EVERY_S):
        self.address = address
        self.every_s = every_s
        self._last = float("-inf")
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Watchdog:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        every_s = DEFAULT_EVERY_S
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            every_s = min(DEFAULT_EVERY_S, int(usec) / 1e6 / 3)
        return cls(address, every_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send one notification (e.g. "READY=1"); False when there is no socket or it failed."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(state.encode(), target)
            return True
        except OSError as err:
            if not self._warned:  # once: a watchdog that cannot ping will be noticed by systemd anyway
                logger.warning("sd_notify to %s failed: %s", self.address, err)
                self._warned = True
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        self._last = time.monotonic()

    def tick(self, now: float | None = None) -> None:
        """Ping the watchdog if it is due; cheap enough to call every loop turn."""
        if self.address is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last >= self.every_s:
            self._last = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
        if self._socket is not None:
            self._socket.close()
            self._socket = None
