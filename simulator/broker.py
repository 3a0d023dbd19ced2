"""Start and stop a real mosquitto broker on a free loopback port (tests, simulator, demo).

The broker runs with a generated configuration in its own directory: no system service,
no fixed port, so parallel test runs and a developer's own broker never collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in MOSQUITTO_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise BrokerError("mosquitto not found: install it with `apt-get install mosquitto` "
                      "(scripts/setup.sh does this)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sets_user(config: str) -> bool:
    return any(line.split()[:1] == ["user"] for line in config.splitlines())


class Broker:
    """A mosquitto process. `extra_config` lines are appended (TLS listeners, ACLs...)."""

    def __init__(self, workdir: Path, port: int | None = None,
                 extra_config: str = "", allow_anonymous: bool = True) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # Bounded queues: mosquitto 2.0.11 stalls QoS 1 delivery past ~65k queued
            # messages when the queue is unlimited (design brief).
            "max_queued_messages 10000",
            "max_inflight_messages 100",
            "persistence false",
            # Started as root, mosquitto would switch to the `mosquitto` user and then be
            # unable to write its log in a private temporary directory.
            *(["user root"] if os.geteuid() == 0 and not _sets_user(self.extra_config)
              else []),
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config)

    def start(self, timeout: float = 10.0) -> Broker:
        self.write_config()
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr
                err = stderr.read().decode(errors="replace") if stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited at start: {err.strip()} {log.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
