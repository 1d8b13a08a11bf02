"""The synchronous OpenAI-compatible surface (spec §5.4): `POST /v1/chat/completions` and
`GET /v1/models`, answered by the same engine as the batches.

The request is the flat body of a batch item (`model` plus that model's fields), so
`{"model": "summarize", "text": "...", "instructions": "One sentence."}` is a valid request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchapi.emulator import engine
from batchapi.emulator.completion import chat_completion
from batchapi.models import BODY_ADAPTER, MODELS, ModelCard, ModelList

_MODEL_CHOICES = ", ".join(repr(model) for model in MODELS)
OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/models"})


def text_of_messages(messages: Any) -> str | None:
    """The text of the `user` messages, joined by blank lines; None when there is none.

    GAP: the docs' synchronous body is the flat batch body, with `text`. OpenAI SDK callers
    send `messages` (the SDK requires it), so a request without `text` takes its text from
    the user messages: plain strings or `{"type": "text", "text": ...}` parts.
    """
    if not isinstance(messages, list):
        return None
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [
                part["text"]
                for part in content
                if isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ]
    return "\n\n".join(texts) if texts else None


def _schema_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape, without the input (it may be a whole document)."""
    errors = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = [part for part in error["loc"] if part not in MODELS]  # the union's tag
        errors.append({**error, "loc": ["body", *loc]})
    return errors


def _request_body(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"request body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "request body must be a JSON object")
    if data.get("stream"):
        # GAP: streaming is undocumented; the domain result is one JSON document anyway.
        raise HTTPException(400, "stream=true is not supported: ask without streaming")
    model = data.get("model")
    if model not in MODELS:
        # GAP: the status for an unknown model is undocumented; 400, as for a batch line.
        raise HTTPException(
            400, f"model {model!r} is not served; use one of {_MODEL_CHOICES} (GET /v1/models)"
        )
    if "text" not in data and (text := text_of_messages(data.get("messages"))) is not None:
        data["text"] = text
    return data


def openai_router(
    dependencies: Sequence[Depends], created: int, on_completion: Callable[[], None]
) -> APIRouter:
    router = APIRouter(dependencies=list(dependencies))
    models = ModelList(data=[ModelCard(id=model, created=created) for model in MODELS])

    @router.get("/v1/models")
    def list_models() -> Response:
        return Response(models.model_dump_json(), media_type="application/json")

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        data = _request_body(await request.body())
        try:
            body = BODY_ADAPTER.validate_python(data)
        except ValidationError as exc:
            raise RequestValidationError(_schema_errors(exc)) from None
        try:
            result = await run_in_threadpool(engine.run, body)
        except Exception as exc:
            raise HTTPException(500, f"engine error: {type(exc).__name__}") from exc
        on_completion()
        completion = chat_completion(body, result.model_dump_json(), int(time.time()))
        return Response(completion.model_dump_json(), media_type="application/json")

    return router


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _openai_error(status: int, message: str, detail: Any, headers: Any = None) -> JSONResponse:
    # GAP: the error body is undocumented; here it keeps our {"detail": ...} and adds OpenAI's
    # {"error": {"message", "type"}}, the only part the OpenAI SDK puts in its exceptions.
    body = {"detail": detail, "error": {"message": message, "type": _error_type(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_openai_errors(app: FastAPI) -> None:
    """Errors of the OpenAI-compatible paths in both shapes; other paths keep FastAPI's."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path not in OPENAI_PATHS:
            return await http_exception_handler(request, exc)
        return _openai_error(exc.status_code, str(exc.detail), exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _schema_error(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path not in OPENAI_PATHS:
            return await request_validation_exception_handler(request, exc)
        errors = list(exc.errors())
        message = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors
        )
        return _openai_error(422, message, errors)
