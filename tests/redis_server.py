"""A real redis-server for tests: loopback only, a free port, its data in a temporary folder.

Its append-only file is fsynced on every write, so a SIGKILLed Redis comes back with its data, as
an operator's persistent Redis would; ``flush`` plays a Redis that lost it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.servers import free_port


class RedisServer:
    def __init__(self, root: Path, password: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen | None = None
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(root),
                        "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                        "--protected-mode", "yes", "--logfile", str(root / "redis.log")]
        if password:
            self.command += ["--requirepass", password]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.root / 'redis.log'}")
            try:
                with self.client() as client:
                    if client.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not answer within 20 s")

    def kill(self) -> None:
        """SIGKILL: no chance to say goodbye to clients, as in a crash or a lost node."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()
