"""Typed errors of the Batch API client.

Every error says whether repeating the same call can succeed (`retryable`), carries the HTTP
status when there was one and the server's own message. No error ever contains the API key or
a request header.

    BatchApiError
    ├── TransientApiError           429, 5xx, timeouts, connection errors (retryable)
    │   └── SubmitOutcomeUnknownError   a submit whose answer was lost (NOT blindly retryable)
    └── TerminalApiError            4xx: repeating the call cannot help
        ├── AuthenticationError     401, 403
        ├── NotFoundError           404
        └── BadRequestError         400, 413, 422
    InvalidBatchError (ValueError)  client-side validation, raised before any request
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_MESSAGE_CHARS = 500
_MAX_PROBLEMS_SHOWN = 20


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BatchApiError(Exception):
    """Base of every error raised by talking to the Batch API.

    `message` is the server's own text (its `detail`) or, without a server answer, what went
    wrong; `str(exc)` adds the call, the status and, where useful, what to do about it.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        operation: str | None = None,
        hint: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.operation = operation  # e.g. "GET /v1/batches/batch_1"; never headers
        self.hint = hint
        self.attempts = attempts

    def __str__(self) -> str:
        parts = []
        if self.operation:
            parts.append(self.operation)
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        text = f"{' -> '.join(parts)}: {self.message}" if parts else self.message
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        if self.hint:
            text += f". {self.hint}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state would be lost by the default pickling (Prefect may persist a
        # task's exception), so rebuild from the message and restore the attributes.
        return (type(self), (self.message,), self.__dict__.copy())


class TransientApiError(BatchApiError):
    """The call may succeed if repeated later: 429, 5xx, a timeout or a connection error."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class SubmitOutcomeUnknownError(TransientApiError):
    """`POST /v1/batches` was sent but its answer was lost: the batch may have been queued.

    The condition is transient, but repeating the submit could queue (and bill) the same work
    twice, so `retryable` is False: the caller decides, knowing that.
    """

    retryable = False


class TerminalApiError(BatchApiError):
    """A 4xx answer: the same call will fail again until the request or setup is fixed."""


class AuthenticationError(TerminalApiError):
    """401/403: the API key is missing, wrong or lacks access."""


class NotFoundError(TerminalApiError):
    """404: unknown batch id, or (revision B) output requested before it exists."""


class BadRequestError(TerminalApiError):
    """400/413/422: the server rejected the request; nothing was queued."""


class InvalidBatchError(ValueError):
    """A batch that fails client-side validation; raised before any request is sent.

    `problems` lists each offending line (index and custom_id) with the fix.
    """

    retryable = False

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        shown = self.problems[:_MAX_PROBLEMS_SHOWN]
        more = len(self.problems) - len(shown)
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"invalid batch ({len(self.problems)} {noun}), nothing was sent:"]
        lines += [f"  - {problem}" for problem in shown]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))
