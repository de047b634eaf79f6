"""The real stack for end-to-end tests: Chroma behind nginx, our server, Open WebUI."""

from __future__ import annotations

import re
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Iterator

from config import Settings, load_settings
from tests.servers import REPO, free_port
from vector_bridge.stack import Service, chroma_service, embed_service, openwebui_service

NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "chroma-auth.conf.template"


def render_proxy_config(prefix: Path, listen_port: int, upstream_port: int, token: str) -> Path:
    """The shipped template, filled in as compose's and k8s' envsubst fill it."""
    if not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
        raise ValueError("a Chroma token may hold only letters, digits and - . _ ~")
    for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(Template(NGINX_TEMPLATE.read_text()).safe_substitute(
        LISTEN=f"127.0.0.1:{listen_port}", UPSTREAM=f"127.0.0.1:{upstream_port}", CHROMA_TOKEN=token, PREFIX=prefix))
    return config


def nginx_service(root: Path, listen_port: int, upstream_port: int, token: str) -> Service:
    prefix = root / "nginx"
    config = render_proxy_config(prefix, listen_port, upstream_port, token)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return Service("nginx", [nginx, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"],
                   # The heartbeat answers 401 without the token; the service is up when it answers at all.
                   f"http://127.0.0.1:{listen_port}/api/v2/heartbeat", root / "logs" / "nginx.log",
                   ready_statuses=(200, 401))


@dataclass
class Stack:
    root: Path
    settings: Settings  # as Open WebUI sees it: Chroma through the proxy, with the token
    chroma_url: str  # Chroma itself, behind the proxy
    chroma: Service
    proxy: Service
    embed: Service
    openwebui: Service | None = None

    @property
    def services(self) -> list[Service]:
        return [s for s in (self.chroma, self.proxy, self.embed, self.openwebui) if s is not None]

    def start(self) -> None:
        for service in self.services:
            service.spawn()
            service.wait_ready()

    def restart(self, *services: Service) -> None:
        for service in services:
            service.stop()
        for service in services:
            service.spawn()
            service.wait_ready()

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    @contextmanager
    def running(self, logs_to: Path) -> Iterator[Stack]:
        """Started for the block, then stopped, its logs kept in ``logs_to`` whatever the tests did."""
        try:
            self.start()
            yield self
        finally:
            self.stop()
            logs_to.mkdir(parents=True, exist_ok=True)
            for log in (self.root / "logs").glob("*.log"):
                (logs_to / log.name).write_bytes(log.read_bytes())


def build_stack(root: Path, *, with_openwebui: bool, **overrides: object) -> Stack:
    chroma_port, proxy_port = free_port(), free_port()
    token = secrets.token_urlsafe(24).replace("-", "").replace("_", "")  # no "," or "=" for CHROMA_HTTP_HEADERS
    common = dict(port=free_port(), log_dir=root / "logs", state_dir=root / "state", chroma_path=root / "chroma",
                  openwebui_data=root / "open-webui", openwebui_url=f"http://127.0.0.1:{free_port()}") | overrides
    internal = load_settings(chroma_port=chroma_port, **common)
    public = load_settings(chroma_port=proxy_port, chroma_token=token, **common)
    stack = Stack(
        root, public, f"http://127.0.0.1:{chroma_port}",
        chroma=chroma_service(internal),
        proxy=nginx_service(root, proxy_port, chroma_port, token),
        embed=embed_service(public, None),
    )
    if with_openwebui:
        stack.openwebui = openwebui_service(public)
    return stack


