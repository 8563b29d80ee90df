"""systemd's notify protocol (sd_notify(3)), spoken directly: no libsystemd, no dependency.

Owns the wire protocol and the watchdog interval rule, nothing else: *when* to say READY=1
or STOPPING=1 is the caller's decision (`esm.cli` wires it to `Daemon.on_ready` and the
drain). Under `Type=notify` systemd passes the address of a unix datagram socket in
`NOTIFY_SOCKET` (a path, or an abstract socket when it starts with `@`); a notification is
one datagram of newline-separated `KEY=VALUE` assignments. `WatchdogSec=` sets
`WATCHDOG_USEC` (and `WATCHDOG_PID`): the service must send `WATCHDOG=1` more often than
that, and sd_watchdog_enabled(3) recommends every half interval.

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so `esm run` behaves the same
in a terminal, a container or a unit. A notification that cannot be sent is logged and
never raised: losing a status message must not stop the daemon.

    notifier = Notifier.from_environment()
    notifier.ready(status="polling 3 mappings")   # True when the datagram was sent
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import anyio

from esm.observability import get_logger

log = get_logger("esm.sd_notify")

SEND_TIMEOUT_SECONDS = 1.0
ENVIRONMENT_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notifications to one `NOTIFY_SOCKET` address (None: every call is a no-op)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_environment(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        pid: int | None = None,
        unset: bool = True,
    ) -> Notifier:
        """Read `NOTIFY_SOCKET` and the watchdog settings, then (like sd_notify's
        `unset_environment`) remove them, so handler processes esm starts cannot notify
        systemd in esm's name. The watchdog applies only if `WATCHDOG_PID` is unset or
        names this process, as sd_watchdog_enabled(3) rules."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        usec_text = env.get("WATCHDOG_USEC", "")
        pid_text = env.get("WATCHDOG_PID", "")
        if unset:
            for name in ENVIRONMENT_VARIABLES:
                env.pop(name, None)
        watchdog_usec: int | None = None
        if usec_text.isdigit() and (not pid_text or pid_text == str(pid or os.getpid())):
            watchdog_usec = int(usec_text)
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, or None when it is unset."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; True if it was sent."""
        if self.address is None:
            return False
        target: str | bytes = self.address
        if self.address.startswith("@"):
            target = b"\0" + self.address[1:].encode()
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.connect(target)
                sock.sendall(payload)
        except OSError as exc:
            log.warning(
                "sd_notify.failed", address=self.address, message=assignments[0], error=str(exc)
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup is finished (esm: every enabled mapping polls)."""
        return self.notify("READY=1", *_status(status))

    def stopping(self, extend_timeout: float | None = None, status: str | None = None) -> bool:
        """STOPPING=1: the drain began. `extend_timeout` (seconds) also sends
        EXTEND_TIMEOUT_USEC, so a `TimeoutStopSec=` shorter than the drain does not kill
        in-flight batches (systemd ≥ 236)."""
        extend = []
        if extend_timeout is not None:
            extend.append(f"EXTEND_TIMEOUT_USEC={int(extend_timeout * 1_000_000)}")
        return self.notify("STOPPING=1", *extend, *_status(status))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.notify("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog every half interval until cancelled; returns at once when no
        watchdog is set. It runs on the daemon's event loop on purpose: a loop that stalls
        stops the pings, and systemd restarts the service."""
        interval = self.watchdog_interval
        if interval is None:
            return
        log.info("sd_notify.watchdog", interval_s=interval)
        while True:
            self.watchdog()
            await anyio.sleep(interval)


def _status(status: str | None) -> list[str]:
    return [] if status is None else [f"STATUS={status}"]
