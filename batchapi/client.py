"""HTTP client for the Batch API: submit a batch, poll it, fetch its output.

`BatchApiClient` (sync, httpx) and `AsyncBatchApiClient` (async, aiohttp: the batch engine's
client, a fifth of the CPU per request) have the same surface::

    with BatchApiClient("http://127.0.0.1:8000", api_key) as client:
        batch = client.submit(lines)           # validated here first, then POST /v1/batches
        batch = client.get(batch.id)           # GET /v1/batches/{id}
        for line in client.output(batch.id):   # GET /v1/batches/{id}/output
            ...

Behaviour worth knowing:

- A batch is validated before it is sent (`validate_lines`); a bad batch raises
  `InvalidBatchError` and costs no round trip.
- Transient failures (429, 5xx, timeouts, connection errors) are retried with full-jitter
  exponential backoff, honouring `Retry-After`. Terminal ones (4xx) raise at once with the
  server's message. A submit is only repeated when the server certainly did not queue it.
- Both revisions of the batch docs are read (see `batchapi.models.Batch`).
- The API key goes in the `x-api-key` header and nowhere else: not in a repr, an exception or
  a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit

import aiohttp
import httpx
from pydantic import SecretStr, ValidationError

from batchapi.errors import (
    AuthenticationError,
    BadRequestError,
    BatchApiError,
    InvalidBatchError,
    NotFoundError,
    SubmitOutcomeUnknownError,
    TerminalApiError,
    TransientApiError,
    truncate,
)
from batchapi.models import (
    MODELS,
    Batch,
    BatchLimits,
    LineError,
    LineErrorCode,
    OutputLine,
    RequestLine,
    encode_jsonl,
    iter_jsonl,
    parse_batch_reply,
)

__all__ = [
    "AsyncBatchApiClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchApiClient",
    "BatchApiError",
    "InvalidBatchError",
    "NotFoundError",
    "SubmitOutcomeUnknownError",
    "TerminalApiError",
    "TransientApiError",
    "check_encoded",
    "parse_batch",
    "parse_output",
    "validate_lines",
]

logger = logging.getLogger(__name__)

LineInput = RequestLine | Mapping[str, Any]
Kind = Literal["submit", "get", "output"]

_KEY_HINT = "BATCH_API_KEY or the BatchApi block's api_key"
_MASK = "********"
# Answers worth repeating: these plus every 5xx. A submit is repeated on them too.
# GAP: whether a 5xx to POST /v1/batches can follow a queued batch is undocumented. We take
# a 5xx answer (500 and 504 included) to mean the server rejected the request before queuing
# it; the docs' 502/503 rows ("backend request failed", "router not configured") fit that.
# A lost answer (timeout, dropped connection) is different: see SubmitOutcomeUnknownError.
_TRANSIENT_STATUS = frozenset({408, 429})
# Connections to the API held open by one client, and how long an idle one is kept.
MAX_CONNECTIONS = 16
KEEPALIVE_EXPIRY_SECONDS = 2.0


# --------------------------------------------------------------------------- validation


def validate_lines(
    lines: Iterable[LineInput] | LineInput, limits: BatchLimits | None = None
) -> list[RequestLine]:
    """Check a batch the way the server would, and return it as `RequestLine`s.

    Raises `InvalidBatchError` listing every offending line (index and custom_id) with the
    fix. A single line (model or dict) is accepted as a one-line batch.
    """
    validated, _ = _validate_and_encode(lines, limits or BatchLimits())
    return validated


def _validate_and_encode(
    lines: Iterable[LineInput] | LineInput, limits: BatchLimits
) -> tuple[list[RequestLine], bytes]:
    if isinstance(lines, RequestLine | Mapping):
        lines = [lines]
    items = list(lines)
    problems: list[str] = []
    if not items:
        raise InvalidBatchError(["the batch is empty; give at least one line"])
    if len(items) > limits.max_lines:
        problems.append(
            f"the batch has {len(items)} lines; the limit is {limits.max_lines} per batch "
            "(split it into several batches)"
        )

    validated: list[RequestLine] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        raw = item.model_dump(exclude_none=True) if isinstance(item, RequestLine) else item
        prefix = _line_prefix(index, raw)
        try:
            line = RequestLine.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{prefix}: {_describe(error)}" for error in exc.errors()]
            continue
        if line.custom_id in first_index:
            problems.append(
                f"{prefix}: duplicate custom_id (first used on line "
                f"{first_index[line.custom_id]}); results are matched on custom_id, "
                "so make each one unique"
            )
        else:
            first_index[line.custom_id] = index
        validated.append(line)

    if problems:
        raise InvalidBatchError(problems)
    body = encode_jsonl(validated)
    if len(body) > limits.max_bytes:
        raise InvalidBatchError(
            [
                f"the batch is {len(body)} bytes as JSONL; the limit is {limits.max_bytes} "
                "(split it into smaller batches or shorten the texts)"
            ]
        )
    return validated, body


def check_encoded(payload: bytes, line_count: int, limits: BatchLimits) -> None:
    """The limits check for a JSONL body whose lines were built from the models already."""
    problems = []
    if line_count < 1:
        problems.append("the batch is empty; give at least one line")
    if line_count > limits.max_lines:
        problems.append(
            f"the batch has {line_count} lines; the limit is {limits.max_lines} per batch "
            "(split it into several batches)"
        )
    if len(payload) > limits.max_bytes:
        problems.append(
            f"the batch is {len(payload)} bytes as JSONL; the limit is {limits.max_bytes} "
            "(split it into smaller batches or shorten the texts)"
        )
    if problems:
        raise InvalidBatchError(problems)


def _line_prefix(index: int, raw: Any) -> str:
    custom_id = raw.get("custom_id") if isinstance(raw, Mapping) else None
    if isinstance(custom_id, str) and custom_id:
        shown = custom_id if len(custom_id) <= 40 else custom_id[:37] + "..."
        return f"line {index} (custom_id {shown!r})"
    return f"line {index}"


_FIXES = {
    "custom_id": "give every line a unique, non-empty custom_id",
    "text": "send the document's plain text",
    "entities": "map at least one label to a plain-English description",
    "labels": "give at least one {name, rubric} label",
}


def _describe(error: Mapping[str, Any]) -> str:
    """Turn one pydantic error into a sentence that says what to fix."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    # ('body', 'classify', 'labels') -> 'body.labels': the model tag is noise here.
    loc = [str(part) for part in error["loc"] if part not in MODELS]
    field = ".".join(loc)
    name = loc[-1] if loc else ""
    models = ", ".join(MODELS)
    if kind == "union_tag_invalid":
        return f"body.model {ctx.get('tag')!r} is not a known model; use one of {models}"
    if kind == "union_tag_not_found":
        return f"body.model is missing; use one of {models}"
    if kind == "model_type" and not loc:
        return "the line is not a JSON object; send one object per line"
    if kind == "missing":
        return f"{field} is missing; {_FIXES.get(name, 'add it')}"
    if kind in ("too_short", "string_too_short"):
        return f"{field} must not be empty; {_FIXES.get(name, 'give a value')}"
    if kind == "string_too_long" and name == "custom_id":
        return f"custom_id is too long; use at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return f"{field} must be {ctx.get('expected')} (or leave it out)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if name == "text" and "blank" in message:
        return f"body.text must not be blank; {_FIXES['text']}"
    return f"{field}: {message}" if field else message


# --------------------------------------------------------------------------- parsing


def parse_batch(payload: bytes | str | Mapping[str, Any]) -> Batch:
    """Read a Batch object of either docs revision (A: `batch_id`, `queued`, `*_count`).

    A reply of neither shape raises `BatchShapeError` (a ValueError) naming its fields.
    """
    data = payload if isinstance(payload, Mapping) else json.loads(payload)
    return parse_batch_reply(data)


def parse_output(payload: bytes | str) -> list[OutputLine]:
    """Read the JSONL of `GET /v1/batches/{id}/output`, one `OutputLine` per line.

    Minimal lines (the docs' samples omit `id`, `object`, `usage`, ...) are accepted. A line
    with a custom_id but an unreadable response becomes that line's `server_error`, so one
    bad line does not lose the rest of the batch. Raises ValueError for a line without
    custom_id or one that is not JSON.
    """
    fast = _parse_output_fast(payload)
    if fast is not None:
        return fast
    return [_output_line(item, number) for number, item in enumerate(iter_jsonl(payload), 1)]


def _parse_output_fast(payload: bytes | str) -> list[OutputLine] | None:
    """One validating parse per line (pydantic-core reads the JSON itself); None when any
    line needs the lenient reading above."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    lines: list[OutputLine] = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = OutputLine.model_validate_json(raw)
        except ValidationError:
            return None
        if line.response is not None and line.response.status_code >= 400:
            return None
        lines.append(line)
    return lines


def _output_line(item: dict[str, Any], number: int) -> OutputLine:
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str):
        raise ValueError(f"output line {number} has no custom_id")
    response = item.get("response")
    if item.get("error") is None and isinstance(response, dict):
        status = response.get("status_code")
        if isinstance(status, int) and status >= 400:
            # GAP: OpenAI's batch output reports a failed request as a non-2xx
            # `response.status_code` with `body.error` and `error: null`; read it as the
            # per-line error of our models.
            return OutputLine(custom_id=custom_id, error=_line_error(status, response))
    try:
        return OutputLine.model_validate(item)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()[:3]
        )
        return OutputLine(
            custom_id=custom_id,
            error=LineError(
                code=LineErrorCode.SERVER_ERROR, message=f"unreadable output line: {reasons}"
            ),
        )


def _line_error(status: int, response: dict[str, Any]) -> LineError:
    body = response.get("body")
    message: Any = body
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message", error) if isinstance(error, dict) else error or body
    if status == 429:
        code = LineErrorCode.RATE_LIMITED
    elif status >= 500:
        code = LineErrorCode.SERVER_ERROR
    else:
        code = LineErrorCode.INVALID_REQUEST
    text = message if isinstance(message, str) else json.dumps(message)
    return LineError(code=code, message=truncate(f"HTTP {status}: {text}"))


# --------------------------------------------------------------------------- client core


def _normalise_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    # One docs page's OpenAI-SDK example gives ".../v1" as the base URL; our paths carry /v1.
    return url.removesuffix("/v1")


def _checked_key(api_key: str | SecretStr | None) -> SecretStr | None:
    value = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    value = (value or "").strip()
    if not value:
        return None
    # An illegal header value would make h11 raise with the value in its message.
    if not all(33 <= ord(char) < 127 for char in value):
        raise ValueError(
            "api_key must be printable ASCII without spaces (check for a stray newline or "
            "quote); the key itself is not shown"
        )
    return SecretStr(value)


def _batch_path(batch_id: str, suffix: str = "") -> str:
    if not isinstance(batch_id, str) or not batch_id.strip():
        raise ValueError("batch_id must be a non-empty string")
    return f"/v1/batches/{quote(batch_id, safe='')}{suffix}"


@dataclass(frozen=True, slots=True)
class _Reply:
    """An HTTP answer as the error mapping and parsing read it, whichever library fetched it."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    operation: str  # "GET /v1/batches/..."
    reason_phrase: str = ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @classmethod
    def of_httpx(cls, response: httpx.Response) -> _Reply:
        return cls(
            response.status_code,
            response.headers,
            response.content,
            f"{response.request.method} {response.request.url.path}",
            response.reason_phrase,
        )


# How a failed exchange ended, as far as the transport can tell: `local` (never sent: a bad
# URL or header), `connect` (no connection was made, so nothing reached the server), `proxy`,
# or `wire` (sent, maybe received, answer lost).
_Failure = Literal["local", "connect", "proxy", "wire"]


def _httpx_failure(exc: httpx.TransportError) -> _Failure:
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return "local"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return "connect"
    if isinstance(exc, httpx.ProxyError):
        return "proxy"
    return "wire"


def _aiohttp_failure(exc: Exception) -> _Failure:
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return "local"
    if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError):
        return "proxy"
    # ConnectionTimeoutError: the pool or the connect ran out of time; nothing was sent.
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "connect"
    return "wire"


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, NO_PROXY), as httpx finds it.

    Looked up once per client: aiohttp's own `trust_env` looks it up (and reads ~/.netrc) in a
    thread on every request."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _retry_after(response: _Reply) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _fastapi_item(item: Any) -> str:
    if isinstance(item, dict) and "msg" in item:
        loc = ".".join(str(part) for part in item.get("loc", ()))
        return f"{loc}: {item['msg']}" if loc else str(item["msg"])
    return str(item)


class _ClientCore:
    """What both clients share: configuration, error mapping, backoff, parsing."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None,
        *,
        timeout: float,
        limits: BatchLimits | None,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0 or backoff_base < 0 or backoff_max < 0:
            raise ValueError("max_retries, backoff_base and backoff_max must not be negative")
        self.base_url = _normalise_base_url(base_url)
        self._api_key = _checked_key(api_key)
        self.limits = limits or BatchLimits()
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._random = random.Random()

    def __repr__(self) -> str:
        key = f"'{_MASK}'" if self._api_key else "None"
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={key})"

    def _client_options(self) -> dict[str, Any]:
        # No default headers: the key is added per request so that no long-lived object
        # (such as the httpx client's header map, whose repr shows values) holds it.
        # http2 stays off: hpack logs header values at debug level.
        return {
            "base_url": self.base_url,
            # The pool checks every idle connection on each request: a small pool keeps a
            # request's overhead flat however many polls run at once (they queue for a
            # connection instead). The pool timeout is the request timeout.
            "timeout": httpx.Timeout(self.timeout),
            # An idle connection is dropped before servers usually drop theirs (uvicorn after
            # 5 s): a request sent on a connection the server is closing can lose its answer,
            # which for a submit means a batch in doubt.
            "limits": httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
            ),
            "http2": False,
            "follow_redirects": False,
        }

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.get_secret_value()
        if content_type:
            headers["content-type"] = content_type
        return headers

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            text = text.replace(self._api_key.get_secret_value(), _MASK)
        return text

    def _server_message(self, response: _Reply) -> str:
        text = response.text
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            # GAP: the error body is undocumented; FastAPI's {"detail": ...} is expected,
            # OpenAI's {"error": {"message": ...}} and {"message": ...} are read too.
            detail = data.get("detail", data.get("message"))
            error = data.get("error")
            if detail is None and error is not None:
                detail = error.get("message", error) if isinstance(error, dict) else error
            if isinstance(detail, list):
                detail = "; ".join(_fastapi_item(item) for item in detail)
            if detail is not None:
                text = detail if isinstance(detail, str) else json.dumps(detail)
        text = truncate(self._redact(text))
        return text or response.reason_phrase or "no message"

    def _response_error(self, response: _Reply, kind: Kind) -> BatchApiError:
        status = response.status_code
        operation = response.operation
        message = self._server_message(response)
        common: dict[str, Any] = {"status_code": status, "operation": operation}
        if status >= 500 or status in _TRANSIENT_STATUS:
            return TransientApiError(message, retry_after=_retry_after(response), **common)
        if status in (401, 403):
            hint = (
                f"No API key is configured: set {_KEY_HINT}"
                if self._api_key is None
                else f"Check the API key ({_KEY_HINT})"
            )
            return AuthenticationError(message, hint=hint, **common)
        if status == 404:
            if kind == "output":
                hint = "Unknown batch id, or its output is not ready yet: poll get() first"
            elif kind == "get":
                hint = "Check the batch id"
            else:
                hint = f"Check base_url ({self.base_url}): it serves no batch API"
            return NotFoundError(message, hint=hint, **common)
        if status in (400, 413, 422):
            hint = "Nothing was queued; fix the request" if kind == "submit" else None
            return BadRequestError(message, hint=hint, **common)
        if 300 <= status < 400:
            return TerminalApiError(
                f"unexpected redirect to {response.headers.get('location', '?')}",
                hint="Check base_url",
                **common,
            )
        return TerminalApiError(message, **common)

    def _transport_error(
        self, exc: Exception, failure: _Failure, operation: str, kind: Kind
    ) -> BatchApiError:
        name = type(exc).__name__
        if failure == "local":
            # A local fault; the exception text may quote header values, so it is not shown.
            return TerminalApiError(f"the request could not be sent ({name})", operation=operation)
        detail = truncate(self._redact(str(exc)), 200) or name
        if failure == "connect":
            # Nothing left this process: safe to repeat, even a submit.
            return TransientApiError(
                f"cannot connect to {self.base_url}: {detail}",
                operation=operation,
                hint="Check that base_url is right and the server is up",
            )
        if failure == "proxy":
            return TransientApiError(f"proxy error: {detail}", operation=operation)
        if kind == "submit":
            # Read/write timeouts, dropped connections: the body may have reached the
            # server and been queued. Repeating it could pay for the same batch twice.
            return SubmitOutcomeUnknownError(
                f"the batch was sent but no answer came back ({name}: {detail}); it may or may "
                "not have been queued",
                operation=operation,
                hint="Do not resubmit blindly: the API has no way to look a batch up by its "
                "content, so a resubmit may run (and bill) it twice",
            )
        return TransientApiError(f"{name}: {detail}", operation=operation)

    def _delay(self, error: BatchApiError, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now."""
        if not error.retryable or attempt >= self.max_retries:
            return None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            # Never sooner than the server asked. A wait beyond backoff_max is the caller's to
            # schedule: the error carries retry_after.
            return retry_after if retry_after <= self.backoff_max else None
        ceiling = min(self.backoff_max, self.backoff_base * 2**attempt)
        return self._random.uniform(0, ceiling)  # full jitter

    def _give_up(self, error: BatchApiError, attempt: int) -> BatchApiError:
        error.attempts = attempt + 1
        return error

    def _log_retry(self, error: BatchApiError, attempt: int, delay: float) -> None:
        status = f"HTTP {error.status_code}" if error.status_code else error.message
        logger.info(
            "%s failed (%s); retry %d of %d in %.2f s",
            error.operation,
            status,
            attempt + 1,
            self.max_retries,
            delay,
        )

    def _batch(self, response: _Reply, kind: Kind) -> Batch:
        # GAP: the success code of POST /v1/batches is undocumented; any 2xx is accepted.
        try:
            return parse_batch(response.content)
        except ValueError as exc:
            message = f"the answer is not a Batch object: {truncate(self._redact(str(exc)), 300)}"
            # After a submit the server said yes, so the batch may well be queued.
            error_type = SubmitOutcomeUnknownError if kind == "submit" else BatchApiError
            raise error_type(
                message,
                status_code=response.status_code,
                operation=response.operation,
            ) from None

    def _output(self, response: _Reply) -> list[OutputLine]:
        try:
            return parse_output(response.content)
        except ValueError as exc:
            raise BatchApiError(
                f"the output is not valid JSONL: {truncate(str(exc), 300)}",
                status_code=response.status_code,
                operation=response.operation,
            ) from None


# --------------------------------------------------------------------------- clients


class BatchApiClient(_ClientCore):
    """Synchronous Batch API client (httpx.Client). Not thread-safe to close while in use."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None = None,
        *,
        timeout: float = 30.0,
        limits: BatchLimits | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            limits=limits,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self._http = httpx.Client(transport=transport, **self._client_options())

    def submit(self, lines: Iterable[LineInput] | LineInput) -> Batch:
        """Validate `lines`, then `POST /v1/batches`; returns the new Batch."""
        _, body = _validate_and_encode(lines, self.limits)
        response = self._send("POST", "/v1/batches", "submit", body)
        return self._batch(response, "submit")

    def get(self, batch_id: str) -> Batch:
        """`GET /v1/batches/{batch_id}`."""
        return self._batch(self._send("GET", _batch_path(batch_id), "get"), "get")

    def output(self, batch_id: str) -> Iterator[OutputLine]:
        """`GET /v1/batches/{batch_id}/output`. Match lines on `custom_id`, not on order."""
        response = self._send("GET", _batch_path(batch_id, "/output"), "output")
        return iter(self._output(response))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, method: str, path: str, kind: Kind, body: bytes | None = None) -> _Reply:
        headers = self._headers("application/jsonl" if body is not None else None)
        attempt = 0
        while True:
            cause: Exception | None = None
            try:
                response = _Reply.of_httpx(
                    self._http.request(method, path, content=body, headers=headers)
                )
            except httpx.TransportError as exc:
                failure = _httpx_failure(exc)
                error = self._transport_error(exc, failure, f"{method} {path}", kind)
                cause = None if failure == "local" else exc
            else:
                if response.is_success:
                    return response
                error = self._response_error(response, kind)
            delay = self._delay(error, attempt)
            if delay is None:
                raise self._give_up(error, attempt) from cause
            self._log_retry(error, attempt, delay)
            time.sleep(delay)
            attempt += 1


class AsyncBatchApiClient(_ClientCore):
    """Asynchronous Batch API client (aiohttp); `output` returns a list.

    aiohttp rather than httpx here: the batch engine makes three or more requests per batch,
    and aiohttp spends about a fifth of httpx's CPU on each (`bench/pipeline.py --scenario
    cpu`). The session is opened on first use, inside the event loop that uses it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None = None,
        *,
        timeout: float = 30.0,
        limits: BatchLimits | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            limits=limits,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self._path_prefix = httpx.URL(self.base_url).path.rstrip("/")
        self._http: aiohttp.ClientSession | None = None
        self._proxy = _env_proxy(self.base_url)

    async def submit(self, lines: Iterable[LineInput] | LineInput) -> Batch:
        """Validate `lines`, then `POST /v1/batches`; returns the new Batch."""
        _, body = _validate_and_encode(lines, self.limits)
        response = await self._send("POST", "/v1/batches", "submit", body)
        return self._batch(response, "submit")

    async def submit_jsonl(
        self, payload: bytes, line_count: int, *, retry_rate_limited: bool = True
    ) -> Batch:
        """`POST /v1/batches` with a JSONL body built from the models (see `RequestLine`), sent
        as it is. `retry_rate_limited=False` hands a 429 to the caller at once (with its
        `retry_after`), for callers that pace their own submissions."""
        check_encoded(payload, line_count, self.limits)
        response = await self._send(
            "POST", "/v1/batches", "submit", payload, retry_rate_limited=retry_rate_limited
        )
        return self._batch(response, "submit")

    async def get(self, batch_id: str) -> Batch:
        """`GET /v1/batches/{batch_id}`."""
        return self._batch(await self._send("GET", _batch_path(batch_id), "get"), "get")

    async def output(self, batch_id: str) -> list[OutputLine]:
        """`GET /v1/batches/{batch_id}/output`. Match lines on `custom_id`, not on order."""
        response = await self._send("GET", _batch_path(batch_id, "/output"), "output")
        return self._output(response)

    async def output_bytes(self, batch_id: str) -> bytes:
        """`GET /v1/batches/{batch_id}/output` as the JSONL bytes, for callers that decode
        lines themselves (`parse_output` reads them the lenient way)."""
        response = await self._send("GET", _batch_path(batch_id, "/output"), "output")
        return response.content

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS
                ),
                # `connect` covers the wait for a pooled connection too: a timeout there means
                # nothing was sent. `sock_read` bounds a silent server once the request is out.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_read=self.timeout
                ),
                trust_env=False,  # the proxy is found once, in __init__
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
        return self._http

    async def _send(
        self,
        method: str,
        path: str,
        kind: Kind,
        body: bytes | None = None,
        *,
        retry_rate_limited: bool = True,
    ) -> _Reply:
        headers = self._headers("application/jsonl" if body is not None else None)
        url = self.base_url + path
        operation = f"{method} {self._path_prefix}{path}"
        attempt = 0
        while True:
            cause: Exception | None = None
            try:
                async with self._session().request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy,
                ) as answer:
                    response = _Reply(
                        answer.status,
                        answer.headers,
                        await answer.read(),
                        operation,
                        answer.reason or "",
                    )
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failure = _aiohttp_failure(exc)
                error = self._transport_error(exc, failure, operation, kind)
                cause = None if failure == "local" else exc
            else:
                if response.is_success:
                    return response
                error = self._response_error(response, kind)
            rate_limited = error.status_code == 429 and not retry_rate_limited
            delay = None if rate_limited else self._delay(error, attempt)
            if delay is None:
                raise self._give_up(error, attempt) from cause
            self._log_retry(error, attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1
