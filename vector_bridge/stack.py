"""`vector-bridge up`: start Chroma, the embeddings server and optionally Open WebUI; supervise them."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from config import Settings
from config.settings import is_loopback
from embed_server.state_file import locked
from vector_bridge.openwebui_env import StoreDoesNotFit, openwebui_environment
from vector_bridge.store import connect, widen_hnsw_search

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    command: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 180
    ready_statuses: tuple[int, ...] = (200,)
    process: subprocess.Popen | None = None
    restarts: int = 0
    on_ready: Callable[[], None] | None = None  # after every start and restart, before anything else uses it
    ready_check: Callable[[], bool] | None = None  # instead of ready_url, for a service that does not speak HTTP
    user: str | None = None  # run as this system user (PostgreSQL refuses to run as root)
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT is its fast shutdown (SIGTERM waits for clients)

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as output:
            # A new session: Ctrl-C in the terminal reaches us, and we stop children in order.
            self.process = subprocess.Popen(self.command, env={**os.environ, **self.env}, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent, user=self.user,
                                            group=self.user and _primary_group(self.user),
                                            extra_groups=[] if self.user else None)

    def is_ready(self) -> bool:
        if self.ready_check is not None:
            return self.ready_check()
        try:
            return httpx.get(self.ready_url, timeout=2).status_code in self.ready_statuses
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise StackError(f"{self.name} exited with code {self.process and self.process.returncode}; "
                                 f"see {self.log_path}")
            if self.is_ready():
                if self.on_ready is not None:
                    self.on_ready()
                return
            time.sleep(0.3)
        raise StackError(f"{self.name} not ready after {self.ready_timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):  # its own session: its children (PostgreSQL's backends) go too
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed, instead of living on as orphans."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _venv_binary(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def chroma_service(settings: Settings) -> Service:
    settings.chroma_path.mkdir(parents=True, exist_ok=True)
    base = f"http://{settings.chroma_host}:{settings.chroma_port}"
    return Service(
        "chroma",
        [_venv_binary("chroma"), "run", "--path", str(settings.chroma_path),
         "--host", settings.chroma_host, "--port", str(settings.chroma_port)],
        f"{base}/api/v2/heartbeat", settings.log_dir / "chroma.log",
        on_ready=partial(tune_chroma, settings),
    )


def tune_chroma(settings: Settings) -> None:
    """Search settings Open WebUI cannot set itself; a failure here never stops the stack."""
    if not settings.chroma_ef_search:
        return
    try:
        changed = widen_hnsw_search(connect(settings), settings.chroma_ef_search)
    except Exception as error:  # chromadb raises plain exceptions; the store still works untuned
        log.warning("could not tune Chroma collections", extra={"error": str(error)})
        return
    if changed:
        log.info("raised HNSW ef_search", extra={"ef_search": settings.chroma_ef_search, "collections": changed})


def embed_service(settings: Settings, config_file: str | None) -> Service:
    command = [sys.executable, "-m", "embed_server.cli", "--host", settings.host, "--port", str(settings.port)]
    if config_file:
        command += ["--config", config_file]
    env = bridge_environment(settings)
    for name, keys in (("EMBED_API_KEYS", settings.api_keys), ("EMBED_ADMIN_KEYS", settings.admin_keys)):
        if keys:
            env[name] = ",".join(key.get_secret_value() for key in keys)
    if settings.allow_unauthenticated:
        env["EMBED_ALLOW_UNAUTHENTICATED"] = "true"
    return Service("embeddings", command, settings.embeddings_url.removesuffix("/v1") + "/ready",
                   settings.log_dir / "embed-server.log", env=env)


def chat_service(settings: Settings, config_file: str | None) -> Service:
    """The chat server, with its Pipelines server on ``settings.pipelines_port``."""
    command = [sys.executable, "-m", "chat_server.cli", "--host", settings.chat_host, "--port", str(settings.chat_port)]
    if config_file:
        command += ["--config", config_file]
    env = bridge_environment(settings) | {"EMBED_PIPELINES_KEY": pipelines_key(settings)}
    # The first start converts the offline generator's GGUF weights once (a minute on a small CPU).
    return Service("chat", command, f"{settings.chat_url.removesuffix('/v1')}/ready", settings.log_dir / "chat-server.log",
                   env=env, ready_timeout=600)


def pipelines_key(settings: Settings) -> str:
    """The key of the Pipelines server: the configured one, else one generated once and kept in the state folder."""
    if settings.pipelines_key is not None:
        return settings.pipelines_key.get_secret_value()
    return stored_secret(settings.state_dir / "pipelines.key")


def stored_secret(path: Path) -> str:
    """A secret generated on first use and kept in ``path``: owner-only from its first byte (a chmod after
    writing leaves a window), and whole or absent (written aside, then linked into place, so of two racing
    processes one wins and both read its secret), since an empty secret from a killed write would keep the
    service that reads it from ever starting. A secret that cannot be read is an error, never replaced."""
    try:
        if existing := path.read_text().strip():
            return existing
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
            file.flush()
            os.fsync(file.fileno())
        if path.exists() and not path.read_text().strip():
            path.unlink()  # an empty file a killed older write left
        with suppress(FileExistsError):
            os.link(partial, path)  # never replaces: a secret another process stored first wins
    finally:
        partial.unlink(missing_ok=True)
    return path.read_text().strip()


def bridge_environment(settings: Settings) -> dict[str, str]:
    """What the server's /v1/search needs to see the same store and Open WebUI as this process."""
    env = {"EMBED_CHROMA_HOST": settings.chroma_host, "EMBED_CHROMA_PORT": str(settings.chroma_port),
           "EMBED_CHROMA_SSL": str(settings.chroma_ssl).lower(), "OPENWEBUI_URL": settings.openwebui_url,
           # The same state folder (the built-in store's password, the hybrid's counts): not each its own default.
           "EMBED_STATE_DIR": str(settings.state_dir.resolve())}
    if settings.chroma_token is not None:
        env["EMBED_CHROMA_TOKEN"] = settings.chroma_token.get_secret_value()
    if settings.openwebui_api_key is not None:
        env["OPENWEBUI_API_KEY"] = settings.openwebui_api_key.get_secret_value()
    if settings.store == "pgvector":
        env |= {"EMBED_STORE": "pgvector", "EMBED_POSTGRES_HOST": settings.postgres_host,
                "EMBED_POSTGRES_PORT": str(settings.postgres_port)}
        if settings.pgvector_url is not None:
            env["EMBED_PGVECTOR_URL"] = settings.pgvector_url.get_secret_value()
    return env


def openwebui_venv(settings: Settings) -> Path:
    """Open WebUI's own venv, installed once per version in the cache (about 3 GB)."""
    venv = settings.cache_dir / f"open-webui-{settings.openwebui_version}"
    complete = venv / ".install-complete"  # an interrupted install is redone, never used
    if complete.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # One install at a time: two stacks (or test workers) starting Open WebUI at once would both rebuild it.
    with locked(venv):
        if complete.exists():  # another process installed it while this one waited
            return venv
        log.info("installing Open WebUI (once, a few minutes)", extra={"venv": str(venv)})
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, settings.openwebui_torch], check=True)
        subprocess.run([*pip, f"open-webui=={settings.openwebui_version}"], check=True)
        complete.touch()
    return venv


def openwebui_pgvector_client(settings: Settings, venv: Path) -> None:
    """Installs, once, what Open WebUI needs to run on VECTOR_DB=pgvector: its base install lacks the client,
    which its own `postgres` extra pins (pgvector, psycopg2-binary)."""
    complete = venv / ".pgvector-client-complete"
    if complete.exists():
        return
    with locked(venv):
        if not complete.exists():
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"open-webui[postgres]=={settings.openwebui_version}"], check=True)
            complete.touch()


def openwebui_service(settings: Settings) -> Service:
    venv = openwebui_venv(settings)
    if settings.store == "pgvector":
        openwebui_pgvector_client(settings, venv)
    data = settings.openwebui_data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    address = urlsplit(settings.openwebui_url)
    env = openwebui_environment(settings) | {
        "DATA_DIR": str(data),
        "WEBUI_SECRET_KEY": stored_secret(data / ".webui_secret_key"),
        # No outbound calls: no hub downloads, no version check, no model lists from remote APIs.
        "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
        "ENABLE_OLLAMA_API": "false", "ENABLE_OPENAI_API": "false",
    }
    return Service(
        "open-webui",
        [str(venv / "bin" / "open-webui"), "serve", "--host", address.hostname or "127.0.0.1",
         "--port", str(address.port or 8080)],
        f"{settings.openwebui_url.rstrip('/')}/health", settings.log_dir / "open-webui.log", env=env,
        ready_timeout=300,
    )


class Supervisor:
    """Starts services in order, restarts any that exits, stops them in reverse order."""

    def __init__(self, services: list[Service], poll_seconds: float = 1.0) -> None:
        self.services = services
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()

    def start(self) -> None:
        for service in self.services:
            service.spawn()
            service.wait_ready()
            log.info("ready", extra={"service": service.name, "url": service.ready_url, "log": str(service.log_path)})

    def supervise(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            for service in self.services:
                if service.process is not None and service.process.poll() is not None and not self.stopping.is_set():
                    service.restarts += 1
                    log.warning("exited; restarting", extra={"service": service.name,
                                                            "code": service.process.returncode,
                                                            "restarts": service.restarts})
                    service.spawn()
                    try:
                        service.wait_ready()
                        log.info("ready again", extra={"service": service.name})
                    except StackError as error:
                        log.error("restart failed", extra={"service": service.name, "error": str(error)})

    def stop(self) -> None:
        self.stopping.set()
        for service in reversed(self.services):
            service.stop()
            log.info("stopped", extra={"service": service.name})


def exposure_problems(settings: Settings) -> list[str]:
    """What in these settings would open the stack to the network without a credential."""
    problems = [problem] if (problem := settings.exposure_problem()) else []
    if not (is_loopback(settings.chroma_host) or settings.allow_unauthenticated):
        problems.append(f"refusing to start Chroma on {settings.chroma_host}: the Chroma server has no "
                        "authentication of its own. Keep it on 127.0.0.1 and expose it through the token proxy "
                        "of deploy/nginx/, or set EMBED_ALLOW_UNAUTHENTICATED=true to accept an open store.")
    return problems


def store_services(settings: Settings) -> list[Service]:
    """The shared store's own processes: Chroma, the built-in PostgreSQL, or none (your own PostgreSQL)."""
    if settings.store == "chroma":
        return [chroma_service(settings)]
    if settings.pgvector_url is not None:
        return []
    from vector_bridge.postgres import postgres_service  # it builds on this module's Service

    return [postgres_service(settings)]


def redacted_url(url: str) -> str:
    """The URL with its password, and any query (where libpq also takes one), masked."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return parts._replace(query="***" if parts.query else "").geturl()


def run_stack(settings: Settings, *, config_file: str | None = None, with_openwebui: bool = False,
              with_chat: bool = False) -> int:
    if problems := exposure_problems(settings):
        for problem in problems:
            print(f"vector-bridge: {problem}", file=sys.stderr)
        return 2
    from vector_bridge.postgres import PostgresError, pgvector_url

    try:
        services = [*store_services(settings), embed_service(settings, config_file)]
    except (StoreDoesNotFit, PostgresError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 2
    if with_chat:
        services.append(chat_service(settings, config_file))
    if with_openwebui:
        services.append(openwebui_service(settings))
    supervisor = Supervisor(services)

    def request_stop(signum: int, frame: object) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        supervisor.start()
        if settings.store == "pgvector":
            print(f"pgvector store    {redacted_url(pgvector_url(settings))}", flush=True)
        else:
            print(f"Chroma store      http://{settings.chroma_host}:{settings.chroma_port}", flush=True)
        print(f"Embeddings API    {settings.embeddings_url}", flush=True)
        if with_chat:
            print(f"Knowledge chat    {settings.chat_url}", flush=True)
            print(f"Pipelines         {settings.pipelines_url}", flush=True)
        if with_openwebui:
            print(f"Open WebUI        {settings.openwebui_url}", flush=True)
        print(f"Logs              {settings.log_dir}/   (Ctrl-C stops everything)", flush=True)
        supervisor.supervise()
        return 0
    except StackError as error:
        log.error("stack failed to start", extra={"error": str(error)})
        return 1
    finally:
        supervisor.stop()
