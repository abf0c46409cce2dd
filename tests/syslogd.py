"""A syslog daemon's socket for tests: a unix datagram socket at a path of the
test's choosing (what the agent's --log-socket, the libvirt hook's settings or
LogSink's target point at), read by a thread as a daemon reads it (a datagram
queue is short: a sender waits when it is full). No parsing: each test reads the
format it checks."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path


class SyslogSocket:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[bytes] = []       # as they came
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.messages.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    @property
    def lines(self) -> list[str]:
        return [m.decode(errors="replace") for m in list(self.messages)]

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The first message matching `pattern` (re.search), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no log line like {pattern!r} in {self.lines}")

    def wait(self, n: int, timeout: float = 60) -> list[str]:
        """At least n messages, waiting for them."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= n, self.lines
        return self.lines

    def drain(self) -> list[bytes]:
        """Stop reading by thread; take what is still queued (all a closed sender
        sent); every message."""
        self.running = False
        self.thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                self.messages.append(self.sock.recv(65536))
            except (BlockingIOError, OSError):
                break
        return self.messages

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()
