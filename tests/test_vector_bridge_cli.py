"""`vector-bridge` commands that need no running services, and `up` with real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from config import load_settings
from tests.servers import REPO, free_port
from vector_bridge.openwebui_env import openwebui_environment, render_env_file


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_") and not k.startswith("OPENWEBUI_")}
    return subprocess.run([sys.executable, "-m", "vector_bridge.cli", *args], capture_output=True, text=True,
                          env={**clean, **env}, cwd=REPO, timeout=120)


def test_env_example_is_what_the_command_prints() -> None:
    printed = run_cli("openwebui-env").stdout
    assert (REPO / "config" / "openwebui.env.example").read_text() == printed
    assert printed == render_env_file(openwebui_environment(load_settings()))
    assert "ENABLE_PERSISTENT_CONFIG=false" in printed  # the pitfall is explained where users copy from


def test_env_follows_the_settings() -> None:
    env = json.loads(run_cli("openwebui-env", "--json", EMBED_PORT="9001", EMBED_API_KEYS="k1,k2",
                             EMBED_CHROMA_PORT="9002", EMBED_CHROMA_TOKEN="tok").stdout)
    assert env["RAG_OPENAI_API_BASE_URL"] == "http://127.0.0.1:9001/v1"
    assert env["RAG_OPENAI_API_KEY"] == "k1"
    assert env["CHROMA_HTTP_PORT"] == "9002"
    assert env["CHROMA_HTTP_HEADERS"] == "Authorization=Bearer tok"
    assert env["RAG_EMBEDDING_ENGINE"] == "openai" and env["VECTOR_DB"] == "chroma"


def test_env_for_chat_connects_the_chat_and_pipelines_servers_with_one_kept_key(tmp_path: Path) -> None:
    state = {"EMBED_STATE_DIR": str(tmp_path / "state"), "EMBED_PIPELINES_PORT": "9111"}
    first = json.loads(run_cli("openwebui-env", "--chat", "--json", **state).stdout)
    key = (tmp_path / "state" / "pipelines.key").read_text()
    assert (tmp_path / "state" / "pipelines.key").stat().st_mode & 0o777 == 0o600 and len(key) >= 32
    assert first["OPENAI_API_BASE_URLS"] == "http://127.0.0.1:8090/v1;http://127.0.0.1:9111"
    assert first["OPENAI_API_KEYS"] == f";{key}" and first["ENABLE_FORWARD_USER_INFO_HEADERS"] == "true"
    assert json.loads(run_cli("openwebui-env", "--chat", "--json", **state).stdout) == first
    configured = json.loads(run_cli("openwebui-env", "--chat", "--json", **state, EMBED_PIPELINES_KEY="mine").stdout)
    assert configured["OPENAI_API_KEYS"] == ";mine"


def test_models_with_prefixes_make_open_webui_send_input_type(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nid = "e5"\nsource = "x"\nquery_prefix = "query: "\ndocument_prefix = "passage: "\n')
    env = openwebui_environment(load_settings(models_file=models))
    assert env["RAG_EMBEDDING_PREFIX_FIELD_NAME"] == "input_type"
    assert (env["RAG_EMBEDDING_QUERY_PREFIX"], env["RAG_EMBEDDING_CONTENT_PREFIX"]) == ("query", "document")


def test_apply_without_a_token_is_a_clear_error() -> None:
    result = run_cli("openwebui-apply", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "admin token" in result.stderr


@pytest.mark.slow
def test_up_starts_supervises_and_stops_the_stack(tmp_path: Path) -> None:
    env = {"EMBED_PORT": str(free_port()), "EMBED_CHROMA_PORT": str(free_port()),
           "EMBED_CHROMA_PATH": str(tmp_path / "chroma"), "EMBED_LOG_DIR": str(tmp_path / "logs"),
           "EMBED_STATE_DIR": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    stack = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "up"], env={**clean, **env}, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [stack.stdout.readline() for _ in range(3)]
        assert any(f"127.0.0.1:{env['EMBED_PORT']}/v1" in line for line in lines), lines
        embed = f"http://127.0.0.1:{env['EMBED_PORT']}"
        chroma = f"http://127.0.0.1:{env['EMBED_CHROMA_PORT']}"
        assert httpx.post(f"{embed}/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"}).status_code == 200
        # A crashed child is restarted.
        first_pid = int(subprocess.run(["pgrep", "-f", f"chroma run --path {env['EMBED_CHROMA_PATH']}"],
                                       capture_output=True, text=True).stdout.split()[0])
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{chroma}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert httpx.get(f"{chroma}/api/v2/heartbeat").status_code == 200
        # Ctrl-C stops both children.
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=60) == 0
        stderr = stack.stderr.read()
        assert '"exited; restarting"' in stderr and '"service": "chroma"' in stderr
        for url in (f"{embed}/health", f"{chroma}/api/v2/heartbeat"):
            with pytest.raises(httpx.HTTPError):
                httpx.get(url, timeout=2)
    finally:
        if stack.poll() is None:
            stack.kill()


def test_a_stored_secret_is_made_once_and_never_replaced(tmp_path: Path) -> None:
    from vector_bridge.stack import stored_secret

    path = tmp_path / "state" / "service.key"
    first = stored_secret(path)
    assert stored_secret(path) == first and path.stat().st_mode & 0o777 == 0o600
    path.write_text("")  # what a write killed long ago may have left
    assert stored_secret(path) != first
    unreadable = tmp_path / "unreadable.key"
    unreadable.mkdir()  # a secret that cannot be read is an error, not a reason to make another
    with pytest.raises(OSError):
        stored_secret(unreadable)
    assert unreadable.is_dir() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_up_on_pgvector_runs_postgres_and_points_the_chat_server_at_it() -> None:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="up-pgvector-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    env = {"EMBED_PORT": str(free_port()), "EMBED_POSTGRES_PORT": str(free_port()), "EMBED_CHAT_PORT": str(free_port()),
           "EMBED_PIPELINES_PORT": str(free_port()), "EMBED_POSTGRES_PATH": str(root / "postgres"),
           "EMBED_STATE_DIR": str(root / "state"), "EMBED_LOG_DIR": str(root / "logs"), "HF_HUB_OFFLINE": "1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED_", "OPENWEBUI_"))}
    stack = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "up", "--store", "pgvector", "--with-chat"],
                             env={**clean, **env}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [stack.stdout.readline() for _ in range(4)]
        password = (root / "state" / "postgres-openwebui.password").read_text()
        assert any("pgvector store    postgresql://openwebui:***@127.0.0.1" in line for line in lines), lines
        assert not any(password in line for line in lines)
        assert not any("Chroma" in line for line in lines) and not list(root.glob("**/chroma.sqlite3"))
        chat_env = json.loads(run_cli("openwebui-env", "--store", "pgvector", "--json", **env).stdout)
        assert chat_env["VECTOR_DB"] == "pgvector" and password in chat_env["PGVECTOR_DB_URL"]
        # The chat server runs beside it, told where the store is (no Chroma to fall back on).
        assert httpx.get(f"http://127.0.0.1:{env['EMBED_CHAT_PORT']}/ready", timeout=10).status_code == 200
        chat = subprocess.run(["pgrep", "-f", f"chat_server.cli --host 127.0.0.1 --port {env['EMBED_CHAT_PORT']}"],
                              capture_output=True, text=True).stdout.split()[0]
        environment = Path(f"/proc/{chat}/environ").read_bytes().split(b"\0")
        assert b"EMBED_STORE=pgvector" in environment
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=90) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
        subprocess.run(["pkill", "-f", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
