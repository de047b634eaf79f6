"""The token proxy in front of Chroma, rendered from the template compose and k8s ship, with real nginx and a
real Chroma server: tokens of every usual length start, and only the exact header passes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from config import load_settings
from tests.servers import free_port
from tests.stack import nginx_service
from vector_bridge.stack import chroma_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("proxied-chroma")
    settings = load_settings(chroma_port=free_port(), chroma_path=root / "chroma", log_dir=root / "logs")
    chroma = chroma_service(settings)
    chroma.spawn()
    try:
        chroma.wait_ready()
        yield settings.chroma_port
    finally:
        chroma.stop()


@pytest.mark.parametrize("length", [32, 48, 64, 100])
def test_only_the_exact_token_passes(length: int, chroma_port: int, tmp_path: Path) -> None:
    token = secrets.token_hex(length // 2)  # `openssl rand -hex N`, as the deploy docs say
    assert len(token) == length
    port = free_port()
    proxy = nginx_service(tmp_path, port, chroma_port, token)
    proxy.spawn()
    try:
        proxy.wait_ready()
        heartbeat = f"http://127.0.0.1:{port}/api/v2/heartbeat"

        def status(authorization: str | None) -> int:
            headers = {"Authorization": authorization} if authorization is not None else {}
            return httpx.get(heartbeat, headers=headers, timeout=10).status_code

        assert status(f"Bearer {token}") == 200
        refused = {
            "missing": None, "empty": "", "wrong": f"Bearer {secrets.token_hex(length // 2)}",
            "upper-cased": f"Bearer {token.upper()}", "prefix": f"Bearer {token[:-1]}",
            "suffixed": f"Bearer {token}x", "prefixed": f"Bearer x{token}", "scheme case": f"bearer {token}", "bare token": token,
        }
        assert {name: status(header) for name, header in refused.items()} == {name: 401 for name in refused}
    finally:
        proxy.stop()


def test_a_token_that_would_break_the_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        nginx_service(tmp_path, free_port(), free_port(), 'abc"; return 200; #')
