"""The chat server's gate and upload names, without a stack: which path needs what, how large its body may
be, how many sockets an address may hold, and what a client's file name may become."""

from __future__ import annotations

import pytest

from chat_server.errors import TooManySockets
from chat_server.gate import CHAT_SOCKET, DIRECT_ROUTES, ChatGate, SocketSlots, body_limit
from chat_server.uploads import safe_name
from config import load_settings
from embed_server.auth import FailedAttempts, KeyGuard


def gate(chat_limit: str | None = "2/minute") -> ChatGate:
    return ChatGate(KeyGuard([], None), KeyGuard([], chat_limit), FailedAttempts("100/minute"),
                    user=("/v1/models", "/v1/chat/completions", *DIRECT_ROUTES))


def test_the_socket_alone_is_left_to_authenticate_itself() -> None:
    g = gate()
    assert g.refusal(CHAT_SOCKET, None, "10.0.0.1") is None
    for path in ("/api/chat", "/api/chat/ws/", "/api/chat/wsx", "/api/documents", "/api/knowledge", "/v1/models",
                 "/v1/chat/completions"):
        refusal = g.refusal(path, None, "10.0.0.1")
        assert refusal is not None and refusal.status_code == 401, path
    assert g.refusal("/chat", None, "10.0.0.1") is None and g.refusal("/health", None, "10.0.0.1") is None


def test_the_chat_limit_counts_per_credential_on_generating_routes_only() -> None:
    g = gate()
    alice, bob = "Bearer alice-key", "Bearer bob-key"
    assert g.refusal("/api/chat", alice, "10.0.0.1") is None
    assert g.refusal("/api/documents", alice, "10.0.0.1") is None
    limited = g.refusal("/v1/chat/completions", alice, "10.0.0.1")
    assert limited is not None and limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert g.refusal("/api/knowledge", alice, "10.0.0.1") is None  # listing is not generating
    assert g.refusal("/api/chat", bob, "10.0.0.1") is None  # same address, another credential
    assert gate(None).refusal("/api/chat", alice, "10.0.0.1") is None


@pytest.mark.parametrize(("sent", "kept"), [
    ("notes.txt", "notes.txt"), ("../../etc/passwd", "passwd"), ("C:\\Users\\a\\report.pdf", "report.pdf"),
    ("..", "upload"), ("", "upload"), (None, "upload"), ("bad\x00na\nme.md", "badname.md"),
    ("x" * 5000 + ".pdf", "x" * 251 + ".pdf"), ("é" * 300 + ".txt", "é" * 125 + ".txt"),
])
def test_upload_names_are_a_plain_file_name(sent: str | None, kept: str) -> None:
    assert safe_name(sent) == kept
    assert len(safe_name(sent).encode()) <= 255


def test_uploads_go_one_per_credential_and_a_few_in_all() -> None:
    import asyncio

    from chat_server.routes.documents import UploadSlots
    from embed_server.errors import RateLimited

    async def run() -> None:
        slots = UploadSlots(total=2)
        async with slots.slot("alice"):
            with pytest.raises(RateLimited):
                async with slots.slot("alice"):
                    pass
            async with slots.slot("bob"):
                with pytest.raises(RateLimited):  # two under way: a third caller waits
                    async with slots.slot("carol"):
                        pass
        async with slots.slot("alice"):  # a finished upload frees its slot
            pass
        slots.pool.shutdown()

    asyncio.run(run())


def test_json_routes_take_4_mib_and_uploads_the_request_limit() -> None:
    limit = body_limit(load_settings(models=[]))
    for path in ("/api/chat", "/v1/chat/completions", "/v1/chat/completions/x"):
        assert limit(path) == 4 * 1024 * 1024, path
    # Uploads, and the filters Open WebUI sends the whole chat to (images inline), take the request limit.
    for path in ("/api/documents", "/knowledge-filter/filter/inlet", "/knowledge-filter/filter/outlet"):
        assert limit(path) == 32 * 1024 * 1024, path
    assert body_limit(load_settings(models=[], max_request_bytes=1000))("/api/chat") == 1000  # the lower one wins
    assert body_limit(load_settings(models=[], chat_max_json_bytes=10))("/api/chat") == 10


def test_sockets_per_address_are_capped_and_freed() -> None:
    slots = SocketSlots(per_key=2)
    slots.take("10.0.0.1")
    slots.take("10.0.0.1")
    with pytest.raises(TooManySockets, match="at most 2"):
        slots.take("10.0.0.1")
    assert slots.held("10.0.0.1") == 2  # a refused socket is not counted
    slots.take("10.0.0.2")  # another address has its own places
    slots.release("10.0.0.1")
    slots.take("10.0.0.1")
    for _ in range(2):
        slots.release("10.0.0.1")
    slots.release("10.0.0.2")
    assert slots._open == {}  # nothing kept per address that has gone
    unlimited = SocketSlots(per_key=0)
    for _ in range(100):
        unlimited.take("10.0.0.1")
