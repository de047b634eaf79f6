"""The direct chat API (POST /api/chat, its WebSocket, the chat page, POST /api/documents) on the shared chat
stack: real Open WebUI, our embeddings server and store, the chat server on the offline generator.

Alice asks over her private Knowledge and gets the right abstracts as sources, the same over HTTP and the
WebSocket; Bob reaches none of it by any route; uploads land in Open WebUI's own Knowledge and answer; a
headless Chromium uses the page; rate limits answer 429 on servers of their own, per user (two sign-ins of
one user share one budget). Bodies over the JSON cap are 413 before (announced) or while (chunked) they
arrive, an unauthenticated upload is refused before its body is read, and one address holds a bounded number
of sockets.
"""

from __future__ import annotations

import json
import secrets
import socket as sockets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.chat_stack import QUESTIONS, ChatServer, People, chat_service
from tests.conftest import ARTIFACTS
from tests.stack import Stack
from vector_bridge.openwebui import OpenWebUIClient

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

FACT = "The orange submarine Pelican-7 docks at pier 42 of the Valletta harbour every Tuesday at dawn."
# Document text that would run a script if the page put it in as HTML.
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
UPLOAD = "harbour-log.txt"


def root(chat: str) -> str:
    return chat.removesuffix("/v1")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(chat: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{root(chat)}/api/chat", json=body, headers=bearer(key), timeout=300)


def upload(chat: str, key: str, files: list[tuple[str, bytes]], **fields: str) -> httpx.Response:
    parts = [("file", (name, content, "text/plain")) for name, content in files]
    parts += [(name, (None, value)) for name, value in fields.items()]  # multipart even with no file
    return httpx.post(f"{root(chat)}/api/documents", files=parts, headers=bearer(key), timeout=600)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


@contextmanager
def socket(chat: str, key: str | None = None, **options: Any) -> Iterator[ClientConnection]:
    url = "ws" + root(chat).removeprefix("http") + "/api/chat/ws"
    with connect(url, open_timeout=60, proxy=None, **options) as connection:
        if key is not None:
            connection.send(json.dumps({"type": "auth", "token": key}))
            assert receive(connection)["type"] == "ready"
        yield connection


def receive(connection: ClientConnection) -> dict:
    return json.loads(connection.recv(timeout=300))


def socket_ask(connection: ClientConnection, **question: Any) -> list[dict]:
    """Every message the server sends for one question, up to its done or error."""
    connection.send(json.dumps(question))
    messages = [receive(connection)]
    while messages[-1]["type"] not in ("done", "error"):
        messages.append(receive(connection))
    return messages


def test_alice_asks_and_the_right_file_is_among_the_sources(chat: str, people: People) -> None:
    key = people.alice["api_key"]
    found = 0
    for question, relevant in people.questions.items():
        response = ask(chat, key, question=question, knowledge=people.knowledge, max_tokens=16)
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body["answer"], str) and body["answer"].strip()
        assert body["knowledge"] == [{"id": people.knowledge, "name": "Alice papers"}]
        sources = body["sources"]
        assert len(sources) == 5 and [s["number"] for s in sources] == [1, 2, 3, 4, 5]
        assert all(s["knowledge_id"] == people.knowledge and s["text"] for s in sources)
        found += bool({s["name"] for s in sources} & relevant)
    assert found >= QUESTIONS - 1, found  # MiniLM's recall@5 on SciFact is about 0.8

    # A list of ids, "all" (knowledge left out), a history and top_k answer too.
    question = next(iter(people.questions))
    listed = ask(chat, key, question=question, knowledge=[people.knowledge], top_k=2, max_tokens=8,
                 history=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi. Ask away."}])
    assert listed.status_code == 200 and len(listed.json()["sources"]) == 2
    everything = ask(chat, key, question=question, max_tokens=8).json()
    assert {"id": people.knowledge, "name": "Alice papers"} in everything["knowledge"]
    assert people.knowledge in {s["knowledge_id"] for s in everything["sources"]}
    mine = httpx.get(f"{root(chat)}/api/knowledge", headers=bearer(key), timeout=60).json()["data"]
    assert {"id": people.knowledge, "name": "Alice papers"} in mine


def test_the_websocket_streams_tokens_then_sources_then_done_as_api_chat_answers(chat: str, people: People) -> None:
    key = people.alice["api_key"]
    with socket(chat, key) as connection:
        # One socket, several questions: it stays usable after each answer.
        for question in list(people.questions)[:2]:
            messages = socket_ask(connection, question=question, knowledge=people.knowledge, max_tokens=16)
            kinds = [m["type"] for m in messages]
            assert kinds[-2:] == ["sources", "done"] and set(kinds[:-2]) == {"token"}, kinds
            assert "".join(m["text"] for m in messages[:-2]).strip()
            over_http = ask(chat, key, question=question, knowledge=people.knowledge, max_tokens=16).json()
            assert messages[-2]["sources"] == over_http["sources"]
            assert messages[-2]["knowledge"] == over_http["knowledge"]
            assert {s["name"] for s in over_http["sources"]}  # not two empty lists agreeing

    # Clients that can set headers authenticate in the handshake instead.
    with socket(chat, additional_headers=bearer(key)) as connection:
        ready = receive(connection)
        assert ready["type"] == "ready" and {"id": people.knowledge, "name": "Alice papers"} in ready["knowledge"]


def test_bob_reaches_nothing_of_alices_by_any_direct_route(chat: str, people: People) -> None:
    key = people.bob["api_key"]
    refused = assert_openai_error(ask(chat, key, question="What is in it?", knowledge=people.knowledge), 404,
                                  "knowledge_not_found")
    # Word for word what a Knowledge id that does not exist gets: nothing tells Bob it is there.
    absent = assert_openai_error(ask(chat, key, question="What is in it?", knowledge="no-such-id"), 404)
    assert refused["message"].replace(people.knowledge, "X") == absent["message"].replace("no-such-id", "X")
    with socket(chat, key) as connection:
        [error] = socket_ask(connection, question="What is in it?", knowledge=people.knowledge)
        assert error["type"] == "error" and error["status"] == 404 and error["error"] == refused
        over_all = socket_ask(connection, question=next(iter(people.questions)), max_tokens=8)
        assert over_all[-2]["sources"] == []
    assert_openai_error(upload(chat, key, [("bob.txt", b"Bob was here.")], knowledge=people.knowledge), 404,
                        "knowledge_not_found")
    everything = ask(chat, key, question=next(iter(people.questions)), max_tokens=8)
    assert everything.status_code == 200
    assert all(s["knowledge_id"] != people.knowledge for s in everything.json()["sources"])
    assert people.knowledge not in everything.text
    listed = httpx.get(f"{root(chat)}/api/knowledge", headers=bearer(key), timeout=60)
    assert listed.status_code == 200 and people.knowledge not in listed.text


def test_a_made_up_key_is_refused_everywhere(chat: str) -> None:
    key = "sk-made-up-0123456789"
    assert_openai_error(ask(chat, key, question="anything"), 401, "invalid_api_key")
    assert_openai_error(httpx.get(f"{root(chat)}/api/knowledge", headers=bearer(key), timeout=60), 401)
    assert_openai_error(upload(chat, key, [("a.txt", b"a")], knowledge_name="x"), 401)
    assert_openai_error(httpx.post(f"{root(chat)}/api/chat", json={"question": "anything"}, timeout=60), 401)
    with socket(chat) as connection:
        connection.send(json.dumps({"type": "auth", "token": key}))
        error = receive(connection)
        assert error["type"] == "error" and error["status"] == 401 and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            connection.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize("body", [
    {}, {"question": ""}, {"question": "   "}, {"question": 42}, {"question": ["a"]},
    {"question": "q", "knowledge": 7}, {"question": "q", "knowledge": []}, {"question": "q", "knowledge": [""]},
    {"question": "q", "history": "earlier"}, {"question": "q", "history": [{"role": "system", "content": "x"}]},
    {"question": "q", "top_k": "many"}, {"question": "q", "top_k": 0}, {"question": "q", "max_tokens": -1},
    {"question": "q", "knowlege": "misspelt"}, [], "question",
], ids=repr)
def test_bad_input_is_an_openai_shaped_400(chat: str, people: People, body: Any) -> None:
    error = assert_openai_error(ask(chat, people.admin_key, **body) if isinstance(body, dict) else
                                httpx.post(f"{root(chat)}/api/chat", json=body, headers=bearer(people.admin_key),
                                           timeout=60), 400)
    assert error["type"] == "invalid_request_error"


def test_bad_messages_leave_the_server_and_the_socket_usable(chat: str, people: People) -> None:
    key = people.admin_key
    not_json = httpx.post(f"{root(chat)}/api/chat", content=b"{question", timeout=60,
                          headers={**bearer(key), "Content-Type": "application/json"})
    assert "not valid JSON" in assert_openai_error(not_json, 400)["message"]
    with socket(chat, key) as connection:
        connection.send("{not json")
        assert receive(connection)["status"] == 400
        connection.send(b"\x00binary")
        assert receive(connection)["status"] == 400
        for bad in ({"question": ""}, {"type": "mystery"}, {"question": "q", "top_k": "many"}, ["q"], "q"):
            connection.send(json.dumps(bad))
            error = receive(connection)
            assert error["type"] == "error" and error["status"] == 400 and error["error"]["message"], error
        answer = socket_ask(connection, question=next(iter(people.questions)), max_tokens=8)
        assert answer[-1] == {"type": "done"}
    assert httpx.get(f"{root(chat)}/health", timeout=60).json() == {"status": "ok"}
    assert ask(chat, key, question="Still there?", max_tokens=4).status_code == 200


def test_rate_limits_are_per_credential_on_every_chat_route(chat_stack: Stack, people: People) -> None:
    service, url = chat_service(chat_stack, "chat-limited", EMBED_CHAT_RATE_LIMIT="3/minute",
                                EMBED_CHAT_UPLOAD_MAX_BYTES="2000")
    service.spawn()
    try:
        service.wait_ready()
        alice, bob = people.alice["api_key"], people.bob["api_key"]
        question = next(iter(people.questions))
        assert ask(url, alice, question=question, max_tokens=4).status_code == 200
        with socket(url, alice) as connection:
            assert socket_ask(connection, question=question, max_tokens=4)[-1]["type"] == "done"
            # Too large for this server's upload limit: refused with its own 413, and still counted.
            assert_openai_error(upload(url, alice, [("big.txt", b"x" * 5000)], knowledge=people.knowledge), 413,
                                "upload_too_large")
            limited = ask(url, alice, question=question)
            assert_openai_error(limited, 429, "rate_limit_exceeded")
            assert 0 < int(limited.headers["Retry-After"]) <= 60
            [error] = socket_ask(connection, question=question)
            assert error["status"] == 429 and error["error"]["code"] == "rate_limit_exceeded"
            assert 0 < error["retry_after"] <= 60
        assert_openai_error(upload(url, alice, [("a.txt", b"a")], knowledge=people.knowledge), 429)
        completions = httpx.post(f"{url}/chat/completions", headers=bearer(alice), timeout=60, json={
            "model": "knowledge-all", "messages": [{"role": "user", "content": "hi"}]})
        assert_openai_error(completions, 429, "rate_limit_exceeded")
        # Listing is not generation: not under the chat limit. And the limit is Alice's, not the address's.
        assert httpx.get(f"{root(url)}/api/knowledge", headers=bearer(alice), timeout=60).status_code == 200
        assert ask(url, bob, question=question, max_tokens=4).status_code == 200
    finally:
        service.stop()


def test_two_sign_ins_of_one_user_share_one_chat_budget(chat_stack: Stack, people: People) -> None:
    from tests.test_bridge import SECRETS

    # Every sign-in to Open WebUI mints a new token: a budget per credential would be one per sign-in.
    email, password = f"carol-{secrets.token_hex(3)}@example.com", secrets.token_urlsafe(16)
    people.admin._call("POST", "/api/v1/auths/add", json={"name": "Carol", "email": email, "password": password,
                                                           "role": "user"})
    first, second = (OpenWebUIClient(chat_stack.settings.openwebui_url).sign_in(email, password)["token"]
                     for _ in range(2))
    SECRETS.update({password, first, second})
    assert first != second
    service, url = chat_service(chat_stack, "chat-per-user", EMBED_CHAT_RATE_LIMIT="3/minute")
    service.spawn()
    try:
        service.wait_ready()
        question = next(iter(people.questions))
        assert ask(url, first, question=question, max_tokens=4).status_code == 200
        with socket(url, first) as connection:
            assert socket_ask(connection, question=question, max_tokens=4)[-1]["type"] == "done"
        assert ask(url, second, question=question, max_tokens=4).status_code == 200  # the third of Carol's three
        limited = ask(url, second, question=question, max_tokens=4)  # second's own count is only 2
        assert_openai_error(limited, 429, "rate_limit_exceeded")
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        with socket(url, second) as connection:
            [error] = socket_ask(connection, question=question)
            assert error["status"] == 429 and error["error"]["code"] == "rate_limit_exceeded"
        completions = httpx.post(f"{url}/chat/completions", headers=bearer(first), timeout=60, json={
            "model": "knowledge-all", "messages": [{"role": "user", "content": "hi"}]})
        assert_openai_error(completions, 429, "rate_limit_exceeded")
        assert ask(url, people.bob["api_key"], question=question, max_tokens=4).status_code == 200  # Bob's own
    finally:
        service.stop()


MiB = 1024 * 1024


def raw_exchange(url: str, head: str, chunks: Iterator[bytes] = iter(()), timeout: float = 30) -> tuple[str, float]:
    """Sends ``head`` (request line and headers), then ``chunks`` as they come, and reads the answer without
    ever finishing the body: (text, seconds). A server that read the whole body first would never answer."""
    address = httpx.URL(url)
    started = time.perf_counter()
    with sockets.create_connection((address.host, address.port), timeout=timeout) as connection:
        connection.sendall(head.encode())
        try:
            for chunk in chunks:
                connection.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed before the body was sent: its answer is what counts
        received = []
        try:
            while piece := connection.recv(65536):
                received.append(piece)
        except ConnectionResetError:
            pass  # closed with some of the request unread; what came before the reset is its answer
    return b"".join(received).decode("latin-1"), time.perf_counter() - started


def chunked(total: int, piece: int = 256 * 1024) -> Iterator[bytes]:
    """A JSON-looking body a few bytes over ``total`` in HTTP/1.1 chunks, with no closing chunk. It ends
    right past the limit: bytes sent after it would be unread when the server closes, and the reset that
    follows could swallow its answer."""
    yield b'%x\r\n{"question": "q", "history": "\r\n' % len(b'{"question": "q", "history": "')
    for _ in range(total // piece):
        yield b"%x\r\n%s\r\n" % (piece, b"x" * piece)


def parse_answer(text: str) -> tuple[int, dict]:
    head, _, body = text.partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), json.loads(body)


def test_json_bodies_over_the_cap_are_413_announced_or_chunked(chat_server: ChatServer, people: People) -> None:
    chat, key = root(chat_server.url), people.admin_key
    for path in ("/api/chat", "/v1/chat/completions"):
        # 5 MiB announced, not a byte sent: refused from the header alone.
        answer, seconds = raw_exchange(chat, f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                                             f"Content-Type: application/json\r\nContent-Length: {5 * MiB}\r\n\r\n")
        status, body = parse_answer(answer)
        assert status == 413 and body["error"]["code"] == "request_too_large" and seconds < 10, answer[:300]
        assert str(4 * MiB) in body["error"]["message"]
        # Chunked, no length: refused once 4 MiB have arrived, while the body is still coming.
        answer, _ = raw_exchange(chat, f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                                 chunked(4 * MiB))
        status, body = parse_answer(answer)
        assert status == 413 and set(body["error"]) == {"message", "type", "param", "code"}, answer[:300]
        assert body["error"]["code"] == "request_too_large"
    # Under the cap the route reads it: a 3 MiB body with a field /api/chat does not know is its 400.
    fits = httpx.post(f"{chat}/api/chat", json={"question": "q", "padding": "x" * (3 * MiB)}, headers=bearer(key),
                      timeout=120)
    assert "padding" in assert_openai_error(fits, 400)["message"]
    # The Pipelines server: OpenAI's shape on its OpenAI route, the protocol's {"detail": ...} on the others.
    pipes = chat_server.pipelines_url
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {chat_server.pipelines_key}"
            "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, body = parse_answer(raw_exchange(pipes, head, chunked(4 * MiB))[0])
    assert status == 413 and list(body) == ["error"], body
    # The filters get the whole chat from Open WebUI, pictures inline: up to the server's request limit.
    for path in ("/knowledge-filter/filter/inlet", "/v1/knowledge-filter/filter/inlet"):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {chat_server.pipelines_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {64 * MiB}\r\n\r\n")
        status, body = parse_answer(raw_exchange(pipes, head, iter(()))[0])
        assert status == 413 and list(body) == ["detail"], (path, body)
    picture = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                       + "A" * (5 * MiB)}}]}
    inlet = httpx.post(f"{pipes}/knowledge-filter/filter/inlet", headers=bearer(chat_server.pipelines_key),
                       json={"body": {"model": "plain-generator", "messages": [picture]}, "user": {"id": "u1"}},
                       timeout=120)
    assert inlet.status_code == 200, inlet.text[:300]
    assert httpx.get(f"{chat}/health", timeout=60).json() == {"status": "ok"}


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body_is_read(chat: str, people: People) -> None:
    boundary = "b0undary"
    head = ("POST /api/documents HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")
    start = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
             "Content-Type: text/plain\r\n\r\n").encode() + b"a" * 4096
    for auth in ("", "Authorization: Bearer sk-made-up-0123456789\r\n"):
        # One chunk of the upload and no end: the answer must come from the headers and Open WebUI alone.
        answer, seconds = raw_exchange(root(chat), head.format(auth=auth), iter([b"%x\r\n%s\r\n" % (len(start), start)]))
        status, body = parse_answer(answer)
        assert status == 401 and body["error"]["code"] == "invalid_api_key" and seconds < 20, answer[:300]
    # A chunked upload with a credential Open WebUI accepts is read to its end and lands, as any other.
    note = b"Chunked harbour note: the grey ferry Osprey-3 leaves pier 9 at noon."

    def parts() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"knowledge_name\"\r\n\r\nAlice chunked\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ferry.txt\"\r\n"
               "Content-Type: text/plain\r\n\r\n").encode()
        yield note
        yield f"\r\n--{boundary}--\r\n".encode()

    landed = httpx.post(f"{root(chat)}/api/documents", content=parts(), timeout=600, headers={
        **bearer(people.alice["api_key"]), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert landed.status_code == 200, landed.text
    assert [(f["name"], f["status"]) for f in landed.json()["files"]] == [("ferry.txt", "uploaded")]


@contextmanager
def ready_socket(chat: str, key: str) -> Iterator[ClientConnection]:
    """An authenticated socket, once the server has counted the ones closed just before as closed (it learns
    of a close a moment after the client's close handshake ends)."""
    deadline = time.monotonic() + 30
    while True:
        with socket(chat, additional_headers=bearer(key)) as connection:  # nothing to send before the answer
            first = receive(connection)
            if first["type"] == "ready":
                yield connection
                return
        assert first["error"]["code"] == "too_many_sockets" and time.monotonic() < deadline, first
        time.sleep(0.2)


def refused_socket(chat: str, reason: str, **options: Any) -> dict:
    """A socket the server refuses: its 429 message, then close code 1013 with ``reason``."""
    with socket(chat, **options) as refused:
        error = receive(refused)
        with pytest.raises(ConnectionClosed) as closed:
            refused.recv(timeout=60)
    assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason == reason, closed.value.rcvd
    assert error["status"] == 429 and error["error"]["code"] == "too_many_sockets", error
    return error


def test_chat_sockets_are_bounded_per_address_until_they_authenticate_then_per_user(chat: str,
                                                                                   people: People) -> None:
    alice, bob = people.alice["api_key"], people.bob["api_key"]
    with ExitStack() as held:
        for _ in range(8):  # the default cap
            held.enter_context(ready_socket(chat, alice))
        # Her ninth is refused, from another address too.
        error = refused_socket(chat, "too many chat sockets for this user", additional_headers=bearer(alice),
                               source_address=("127.0.0.2", 0))
        assert "at most 8" in error["error"]["message"]
        # Bob, behind the same address (a reverse proxy's, say), is not held to her sockets.
        with socket(chat, bob) as other:
            assert socket_ask(other, question=next(iter(people.questions)), max_tokens=4)[-1]["type"] == "done"
    with ExitStack() as idle:  # sockets that have not authenticated (yet) count against their address
        for _ in range(8):
            idle.enter_context(socket(chat))
        refused_socket(chat, "too many chat sockets from this address")
        with socket(chat, alice, source_address=("127.0.0.2", 0)):
            pass  # another address is not held to this one's
    # Closed sockets free their places.
    with ExitStack() as again:
        for _ in range(8):
            again.enter_context(ready_socket(chat, alice))


@pytest.fixture(scope="module")
def uploaded(chat: str, people: People) -> dict:
    """Alice's upload of a note (with markup in its text) and a file of a type Open WebUI does not read, into
    a new Knowledge base."""
    note = f"Harbour log\n\n{FACT}\n\nA line of markup a page must show as text: {PAYLOAD}\n".encode()
    response = upload(chat, people.alice["api_key"], [(UPLOAD, note), ("figures.xyz", b"1,2,3")],
                      knowledge_name="Alice uploads")
    assert response.status_code == 200, response.text
    return response.json()


def test_uploads_land_in_open_webuis_knowledge_and_answer(chat: str, people: People, uploaded: dict) -> None:
    assert uploaded["knowledge"]["name"] == "Alice uploads" and uploaded["knowledge"]["created"] is True
    by_name = {f["name"]: f for f in uploaded["files"]}
    assert by_name[UPLOAD]["status"] == "uploaded" and by_name[UPLOAD]["file_id"]
    assert by_name["figures.xyz"]["status"] == "skipped" and uploaded["ok"] is False
    knowledge_id = uploaded["knowledge"]["id"]
    # Open WebUI lists it in the Knowledge base, as its own UI does.
    assert people.alice["client"].knowledge(knowledge_id)["name"] == "Alice uploads"
    listed = people.alice["client"].knowledge_files(knowledge_id)  # what its Knowledge page lists (0.12.4)
    assert [(f["id"], f["meta"]["name"]) for f in listed] == [(by_name[UPLOAD]["file_id"], UPLOAD)], listed
    answer = ask(chat, people.alice["api_key"], question="Where does the orange submarine Pelican-7 dock?",
                 knowledge=knowledge_id, max_tokens=24).json()
    assert answer["sources"][0]["name"] == UPLOAD and "pier 42" in answer["sources"][0]["text"]

    # The same file again changes nothing; a second name in one upload is refused by name.
    note = f"Harbour log\n\n{FACT}\n\nA line of markup a page must show as text: {PAYLOAD}\n".encode()
    again = upload(chat, people.alice["api_key"], [(UPLOAD, note), (f"../../{UPLOAD}", b"other")],
                   knowledge=knowledge_id).json()
    assert [(f["name"], f["status"]) for f in again["files"]] == [(UPLOAD, "unchanged"), (UPLOAD, "failed")]
    assert "same name" in again["files"][1]["detail"]
    assert_openai_error(upload(chat, people.alice["api_key"], [], knowledge=knowledge_id), 400)
    assert_openai_error(upload(chat, people.alice["api_key"], [("a.txt", b"a")]), 400)


def test_the_chat_page_answers_with_sources_in_headless_chromium(chat: str, people: People, uploaded: dict) -> None:
    from playwright import sync_api as playwright

    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    assert chromium, "Debian's chromium is missing: `make test` installs it (.ci/system-deps)"
    key = people.alice["api_key"]
    question, relevant = next(iter(people.questions.items()))
    screenshot = ARTIFACTS / "chat-page.png"
    addresses: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: addresses.append(r.url))
            page.on("websocket", lambda w: addresses.append(w.url))
            page.goto(f"{root(chat)}/")
            assert page.url.endswith("/chat")
            page.fill("#key", key)
            page.check("#remember")
            page.click("#connect")
            page.wait_for_selector(f"#knowledge option[value='{people.knowledge}']", state="attached", timeout=60_000)

            def ask_on_page(knowledge_id: str, text: str) -> list[str]:
                page.select_option("#knowledge", knowledge_id)
                page.fill("#question", text)
                page.click("#send")
                # Locators, not wait_for_function: the page's policy forbids the eval that one needs.
                page.locator("#status", has_text="Done.").wait_for(timeout=300_000)
                assert page.inner_text("#answer").strip()
                return page.locator("#sources .source-name").all_inner_texts()

            names = ask_on_page(people.knowledge, question)
            assert len(names) == 5 and set(names) & relevant, names
            page.screenshot(path=str(screenshot), full_page=True)

            # A document's markup is shown as text and never runs.
            names = ask_on_page(uploaded["knowledge"]["id"], "Where does the orange submarine Pelican-7 dock?")
            assert names[0] == UPLOAD
            page.locator("#sources details").first.click()
            assert PAYLOAD in page.locator("#sources .source-text").first.inner_text()
            assert page.evaluate("window.__xss") is None
            assert page.locator("#sources img, #answer img, #sources script").count() == 0
            assert page.evaluate("sessionStorage.getItem('knowledge-chat-key')") == key
            assert not problems, problems
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert addresses and not [a for a in addresses if key in a]  # the key never went into an address


def test_a_knowledge_base_bob_may_only_read_refuses_his_uploads(chat: str, people: People) -> None:
    admin, bob = people.admin, people.bob
    shared = admin.create_knowledge("Team handbook", "read-only for Bob")["id"]
    bob_id = bob["client"].session_user()["id"]
    admin._call("POST", f"/api/v1/knowledge/{shared}/access/update", json={"access_grants": [
        {"principal_type": "user", "principal_id": bob_id, "permission": "read"}]})
    key = bob["api_key"]
    deadline = time.monotonic() + 30  # the server reuses a caller's readable list for a few seconds
    while shared not in httpx.get(f"{root(chat)}/api/knowledge", headers=bearer(key), timeout=60).text:
        assert time.monotonic() < deadline, "the shared Knowledge base never became readable for Bob"
        time.sleep(1)
    assert ask(chat, key, question="What is in the handbook?", knowledge=shared, max_tokens=4).status_code == 200
    error = assert_openai_error(upload(chat, key, [("bob.txt", b"Bob's own note.")], knowledge=shared), 403,
                                "permission_denied")
    assert "not add files" in error["message"]
    assert people.admin.knowledge_files(shared) == []
