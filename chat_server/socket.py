"""The direct chat API's WebSocket: questions in, answers streamed out.

Protocol (JSON text messages):

- client: ``{"type": "auth", "token": "<Open WebUI API key or session token>"}`` first, unless the handshake
  carried ``Authorization: Bearer ...`` (clients other than browsers). The credential never goes in the URL.
- server: ``{"type": "ready", "knowledge": [{"id", "name"}...]}``, the Knowledge bases the caller may read.
- client: a question, the body of ``POST /api/chat`` (``"type": "question"`` optional).
- server: ``{"type": "token", "text"}`` pieces, then ``{"type": "sources", "sources": [...], "knowledge":
  [...]}``, then ``{"type": "done"}``. One question at a time; the socket then takes the next.
- server, on a refused question: ``{"type": "error", "status": <HTTP status>, "error": {OpenAI-shaped}}``
  (429 adds ``retry_after`` seconds); the socket stays open. A credential that fails closes it with 1008
  after the error, an unexpected failure with 1011, and a socket over the cap of open sockets per client
  address (chat_max_sockets_per_host) with 1013 after a 429 ``too_many_sockets``.

The credential travels in a message, not a cookie, so another site's page cannot ride a user's login to open
this socket (no cross-site WebSocket hijacking): it would have to know the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette import status

from chat_server.caller import chat_identity, readable_bases
from chat_server.direct import ask, choose, knowledge_field, parse_question
from chat_server.errors import GeneratorDown, TooManySockets
from chat_server.generators import GeneratorUnavailable
from chat_server.sources import sources_field
from chat_server.gate import SocketSlots
from embed_server.auth import KeyGuard
from embed_server.errors import APIError, AuthenticationFailed, InvalidRequest, PermissionDenied, RateLimited, error_body
from vector_bridge.access import KnowledgeBase

log = logging.getLogger(__name__)
AUTH_WAIT_SECONDS = 10.0  # a socket that never authenticates holds a connection: not for long


class _Closed(Exception):
    """The socket is over: the client left, or the server closed it."""


class ChatSocket:
    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket
        self.app = socket.app
        self.token = ""
        self.identity = ""  # whose chat budget the questions spend (caller.chat_identity)

    async def serve(self) -> None:
        slots: SocketSlots = self.app.state.sockets
        host = self.socket.client.host if self.socket.client else None
        await self.socket.accept()
        try:
            slots.take(host)
        except TooManySockets as error:
            # Accepted first so the client reads why: a refused handshake shows a browser only "failed".
            log.warning("chat socket refused", extra={"event": "chat_sockets_full", "client": host,
                                                      "open": slots.held(host), "cap": slots.cap})
            await self._close_after(error, status.WS_1013_TRY_AGAIN_LATER, "too many chat sockets from this address")
            return
        users: SocketSlots = self.app.state.user_sockets
        by_address, by_user = True, False
        try:
            bases = await self._authenticate()
            # Authenticated: counted against its user from now on, no longer against its address.
            slots.release(host)
            by_address = False
            try:
                users.take(self.identity)
            except TooManySockets as error:
                log.warning("chat socket refused", extra={"event": "chat_sockets_full", "per": "user",
                                                          "cap": users.cap})
                await self._close_after(error, status.WS_1013_TRY_AGAIN_LATER, "too many chat sockets for this user")
                return
            by_user = True
            await self._send({"type": "ready", "knowledge": knowledge_field(bases)})
            while True:
                await self._answer(await self._receive())
        except (_Closed, WebSocketDisconnect):
            return
        except Exception as error:  # noqa: BLE001 - the client gets a clean close, the log the detail
            log.exception("chat socket failed", extra={"error": type(error).__name__})
            await self._close_after(APIError("The server had an error processing the request."),
                                    status.WS_1011_INTERNAL_ERROR)
        finally:
            if by_address:
                slots.release(host)
            if by_user:
                users.release(self.identity)

    async def _receive(self, timeout: float | None = None) -> Any:
        """The next message as JSON; an unreadable one is answered with a 400 and skipped. ``timeout`` bounds
        the whole wait, unreadable messages included: junk does not keep an unauthenticated socket open."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                text = await asyncio.wait_for(self.socket.receive_text(), left)
            except TimeoutError:
                raise await self._close_after(AuthenticationFailed("No credential was sent in time."),
                                              status.WS_1008_POLICY_VIOLATION) from None
            except KeyError:  # a binary frame: receive_text finds no "text"
                await self._send_error(InvalidRequest("Send JSON text messages."))
                continue
            try:
                return json.loads(text)
            except ValueError:
                await self._send_error(InvalidRequest("The message is not valid JSON."))

    async def _authenticate(self) -> list[KnowledgeBase]:
        """The caller's readable Knowledge, once its credential is accepted."""
        header = self.socket.headers.get("authorization")
        if header:
            scheme, _, token = header.partition(" ")
            self.token = token.strip() if scheme.lower() == "bearer" else ""
        else:
            first = await self._receive(AUTH_WAIT_SECONDS)
            if isinstance(first, dict) and first.get("type") == "auth" and isinstance(first.get("token"), str):
                self.token = first["token"].strip()
        if not self.token:
            raise await self._close_after(AuthenticationFailed(
                'Missing API key. Send {"type": "auth", "token": "<key>"} first, or connect with an '
                "Authorization header."), status.WS_1008_POLICY_VIOLATION)
        try:
            bases = await self._readable()
            self.identity = await chat_identity(self.socket, self.token)
        except APIError as error:  # Open WebUI down: the client may try again later
            raise await self._close_after(error, status.WS_1013_TRY_AGAIN_LATER) from None
        return bases

    async def _readable(self) -> list[KnowledgeBase]:
        """The caller's readable Knowledge; a refused credential ends the socket."""
        try:
            return await readable_bases(self.socket, self.token)
        except (AuthenticationFailed, PermissionDenied, RateLimited) as error:
            # RateLimited here: this address has made too many failed credential checks.
            raise await self._close_after(error, status.WS_1008_POLICY_VIOLATION) from None

    async def _answer(self, message: Any) -> None:
        try:
            if isinstance(message, dict) and message.get("type", "question") == "question":
                message = {key: value for key, value in message.items() if key != "type"}
            elif isinstance(message, dict):
                raise InvalidRequest(f"Unknown message type '{str(message.get('type'))[:40]}'.", param="type")
            chat_users: KeyGuard = self.app.state.chat_users
            chat_users.count(self.identity)  # before parsing: malformed questions count too
            question = parse_question(message)
            bases = choose(await self._readable(), question.knowledge)
            answer = await ask(self.app.state.answering, bases, question)
        except APIError as error:
            await self._send_error(error)
            return
        try:
            async for piece in answer.pieces:
                await self._send({"type": "token", "text": piece})
        except GeneratorUnavailable as error:
            # Part of the answer is out: say it broke off, and keep the socket for the next question.
            await self._send_error(GeneratorDown(str(error)))
            return
        finally:
            await answer.pieces.aclose()  # a client that left stops the generator's stream here
        await self._send({"type": "sources", "sources": sources_field(answer.sources),
                          "knowledge": knowledge_field(bases)})
        await self._send({"type": "done"})

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.socket.send_text(json.dumps(message, ensure_ascii=False))
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: Starlette's "already closed"
            raise _Closed from None

    async def _send_error(self, error: APIError) -> None:
        message: dict[str, Any] = {"type": "error", "status": error.status_code,
                                   "error": error_body(error.message, error.type, param=error.param,
                                                       code=error.code)["error"]}
        if "Retry-After" in error.headers:
            message["retry_after"] = int(error.headers["Retry-After"])
        await self._send(message)

    async def _close_after(self, error: APIError, code: int, reason: str | None = None) -> _Closed:
        """Send ``error``, close with ``code`` (and ``reason``, which a browser's close event shows); the caller
        raises what this returns, to end the socket."""
        try:
            await self._send_error(error)
            await self.socket.close(code, reason)
        except (_Closed, WebSocketDisconnect, RuntimeError):
            pass
        return _Closed()
