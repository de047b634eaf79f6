"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class InputTooLong(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    type = "invalid_request_error"
    code = "permission_denied"


class ModelNotFound(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(APIError):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QueueFull(APIError):
    """The server holds as many texts as it may; the client should retry after a pause."""

    status_code = 429
    type = "server_overloaded"
    code = "queue_full"


class NotReady(APIError):
    status_code = 503
    type = "server_error"
    code = "not_ready"


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.type, param=error.param, code=error.code),
        status_code=error.status_code,
        headers=error.headers,
    )


def _describe_validation_error(error: RequestValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{location[0] if location else 'body'}'.", location[0] if location else None
    # pydantic's unions repeat the type name in the location ("input.list[str].0"): keep the field.
    param = location[0] if location else None
    message = first.get("msg", "Invalid request.").removeprefix("Value error, ")
    if param:
        message = f"Invalid '{param}': {message}"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation_error(error)
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = error_body(str(error.detail), "invalid_request_error", code=codes.get(error.status_code))
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(error_body("The server had an error processing the request.", "server_error"), status_code=500)
