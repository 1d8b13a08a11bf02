"""The Batch API wire format: the one place it is written down.

Both the client and the emulator import these models, so a request line, a Batch object and
an output line are defined exactly once. The reference is revision B of the batch docs
(OpenAI-shaped); revision A's batch reply (`RevisionABatch`) sits beside it, because the live
service's revision is unverified: the client reads both, the emulator speaks either.

Choices made where the public docs are silent ([GAP] in the spec) are marked `GAP:` below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

CHAT_COMPLETIONS_URL = "/v1/chat/completions"

# GAP: the batch docs give 20048 as the summarize default, a newer realtime page gives 2048.
# Batch items are documented as 20048, so that is what an absent `max_tokens` means here.
SUMMARIZE_DEFAULT_MAX_TOKENS = 20048

# About four characters per token: the unit the emulator uses for `usage` and `max_tokens`.
CHARS_PER_TOKEN = 4


def approx_tokens(text: str) -> int:
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN) if text else 0


class BatchLimits(BaseModel):
    """Provider limits, as data. Revision B documents 50 lines per batch.

    GAP: no byte limit is documented; 10 MB per request body is our conservative choice.
    """

    model_config = ConfigDict(frozen=True)

    max_lines: int = Field(default=50, ge=1)
    max_bytes: int = Field(default=10_000_000, ge=1_000)


# --------------------------------------------------------------------------- request lines


class _Body(BaseModel):
    # GAP: realtime-only extras (threshold, top_n, ...) are not documented for batch items;
    # unknown fields are ignored rather than rejected.
    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1, description="The document text.")

    @model_validator(mode="before")
    @classmethod
    def _no_documents(cls, data: Any) -> Any:
        # The docs say `document`/`document_mime_type` are not supported in batch items.
        # GAP: what happens when sent anyway; we reject the line with a clear message.
        if isinstance(data, dict) and ("document" in data or "document_mime_type" in data):
            raise ValueError(
                "`document` is not supported in batch items; send the plain `text` instead"
            )
        return data

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value


class ExtractParams(BaseModel):
    """The extract body without its text (and `model`): what an enrichment sets once."""

    entities: dict[str, str] = Field(
        min_length=1,
        # Labels become each entity's `type`.
        description="Entity label -> plain-English description, e.g. {'person': 'a person'}.",
    )
    # Singular, where summarize has `instructions`: as the API names them.
    instruction: str | None = Field(default=None, description="Extra guidance for extraction.")


class ExtractBody(ExtractParams, _Body):
    model: Literal["extract"] = "extract"


class SummarizeParams(BaseModel):
    """The summarize body without its text (and `model`)."""

    instructions: str | None = Field(
        default=None, description="How to summarise, e.g. 'One sentence.'"
    )
    max_tokens: int = Field(
        default=SUMMARIZE_DEFAULT_MAX_TOKENS, ge=1, description="Longest summary, in tokens."
    )


class SummarizeBody(SummarizeParams, _Body):
    model: Literal["summarize"] = "summarize"


class Label(BaseModel):
    """One candidate label of a classify request."""

    name: str = Field(min_length=1, description="The label, as it appears in the output.")
    rubric: str = Field(
        default="", description="A yes/no question that is 'yes' when the label applies."
    )


class ClassifyParams(BaseModel):
    """The classify body without its text (and `model`)."""

    labels: list[Label] = Field(
        min_length=1,
        description="Candidate labels, each a name and a rubric (a yes/no question).",
    )
    system_prompt: str | None = Field(
        default=None, description="Extra instructions for the classifier."
    )

    @field_validator("labels")
    @classmethod
    def _unique_label_names(cls, labels: list[Label]) -> list[Label]:
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        return labels


class ClassifyBody(ClassifyParams, _Body):
    model: Literal["classify"] = "classify"


# Every request body; the registry (`batchapi.registry`) says what else belongs to each model.
AnyBody = ExtractBody | SummarizeBody | ClassifyBody
BODIES: tuple[type[BaseModel], ...] = (ExtractBody, SummarizeBody, ClassifyBody)
MODELS: tuple[str, ...] = tuple(body.model_fields["model"].default for body in BODIES)
RequestBody = Annotated[AnyBody, Field(discriminator="model")]
BODY_ADAPTER: TypeAdapter[AnyBody] = TypeAdapter(RequestBody)


class RequestLine(BaseModel):
    """One line of a batch submission (spec §1.1)."""

    # GAP: no custom_id length is documented; 64 characters is our bound, as OpenAI's.
    custom_id: str = Field(min_length=1, max_length=64)
    method: Literal["POST"] = "POST"
    url: Literal["/v1/chat/completions"] = CHAT_COMPLETIONS_URL
    body: RequestBody

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


_ID_MARK = "\u0000custom_id\u0000"
_TEXT_MARK = "\u0000text\u0000"


class LineTemplate:
    """The request lines of one body for many documents, serialised from `RequestLine` once.

    A line is then the serialised line with its custom id and its text put in place:
    `head + custom_id + middle + text as a JSON string + tail`, so the bytes are exactly the
    model's, at the cost of two joins per line.
    """

    def __init__(self, body_type: type[BaseModel], params: Mapping[str, Any]) -> None:
        body = body_type.model_validate({**params, "text": _TEXT_MARK})
        dumped = RequestLine(custom_id=_ID_MARK, body=body).to_json()  # type: ignore[arg-type]
        head, rest = dumped.split(json.dumps(_ID_MARK)[1:-1])
        middle, tail = rest.split(json.dumps(_TEXT_MARK))
        self._head, self._middle, self._tail = head.encode(), middle.encode(), tail.encode()

    @staticmethod
    def encode_text(text: str) -> bytes:
        """The text as a JSON string, encoded once per document and shared by its lines."""
        return json.dumps(text, ensure_ascii=False).encode("utf-8")

    def line(self, custom_id: str, encoded_text: bytes) -> bytes:
        return b"".join((self._head, custom_id.encode(), self._middle, encoded_text, self._tail))


# --------------------------------------------------------------------------- batch object


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED)


class Revision(StrEnum):
    """The two revisions of the batch docs (spec §0). B is the later, OpenAI-shaped one."""

    A = "A"
    B = "B"


RevisionAStatus = Literal["queued", "processing", "completed", "failed"]
_A_TO_B: dict[str, BatchStatus] = {
    "queued": BatchStatus.VALIDATING,
    "processing": BatchStatus.IN_PROGRESS,
    "completed": BatchStatus.COMPLETED,
    "failed": BatchStatus.FAILED,
}
_B_TO_A: dict[BatchStatus, RevisionAStatus] = {
    BatchStatus.VALIDATING: "queued",
    BatchStatus.IN_PROGRESS: "processing",
    BatchStatus.COMPLETED: "completed",
    BatchStatus.FAILED: "failed",
}


class RequestCounts(BaseModel):
    # GAP: OpenAI semantics: `completed` counts succeeded lines only, `failed` the failed ones.
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchShapeError(ValueError):
    """A reply that is neither revision's Batch object; the message names the fields found."""


_MAX_FIELDS_SHOWN = 12


def _fields_found(data: Mapping[str, Any]) -> str:
    names = [f"`{str(name)[:40]}`" for name in list(data)[:_MAX_FIELDS_SHOWN]]
    more = len(data) - len(names)
    return (", ".join(names) or "none") + (f" and {more} more" if more > 0 else "")


def _neither_revision(data: Mapping[str, Any]) -> BatchShapeError:
    return BatchShapeError(
        "the reply matches neither documented revision of the Batch object (revision B has "
        "`id`, `status`, `request_counts`; revision A has `batch_id`, `status`, `total_count`); "
        f"its fields are: {_fields_found(data)}"
    )


class Batch(BaseModel):
    """The Batch object of revision B (spec §2); revision A replies are read through
    `RevisionABatch` into it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = CHAT_COMPLETIONS_URL
    input_file_id: str | None = None
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_revision_a(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "id" in data:
            return data
        if "batch_id" in data:
            return RevisionABatch.model_validate(data).to_batch().model_dump()
        raise _neither_revision(data)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class RevisionABatch(BaseModel):
    """The batch reply of revision A (spec §1.4, §2.1), beside revision B's `Batch`.

    The create reply carries `batch_id`, `status` (`queued`) and `total_count`; the status
    reply adds `completed_count` and `failed_count`. Read, it becomes a `Batch`.
    """

    model_config = ConfigDict(extra="ignore")

    batch_id: str = Field(min_length=1)
    status: RevisionAStatus
    total_count: int = Field(ge=0)
    completed_count: int | None = Field(default=None, ge=0)
    failed_count: int | None = Field(default=None, ge=0)

    @field_validator("status", mode="before")
    @classmethod
    def _accept_revision_b_words(cls, value: Any) -> Any:
        # A server between the two revisions might mix the vocabularies; read B's words too.
        if isinstance(value, str) and value in _B_TO_A:
            return _B_TO_A[BatchStatus(value)]
        return value

    @classmethod
    def of(cls, batch: Batch, *, created: bool = False) -> RevisionABatch:
        """Revision A's view of `batch`: the create reply (`created`) has no per-state counts."""
        counts = batch.request_counts
        return cls(
            batch_id=batch.id,
            status=_B_TO_A[batch.status],
            total_count=counts.total,
            completed_count=None if created else counts.completed,
            failed_count=None if created else counts.failed,
        )

    def to_batch(self) -> Batch:
        return Batch(
            id=self.batch_id,
            status=_A_TO_B[self.status],
            request_counts=RequestCounts(
                total=self.total_count,
                completed=self.completed_count or 0,
                failed=self.failed_count or 0,
            ),
        )

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def parse_batch_reply(data: Any) -> Batch:
    """Read a batch reply of either revision (B: `id`; A: `batch_id`) as a `Batch`.

    Raises `BatchShapeError` naming the fields found when it is neither, or when it looks
    like one revision but lacks what that revision requires.
    """
    if not isinstance(data, Mapping):
        raise BatchShapeError(
            f"the reply is a JSON {type(data).__name__}, not an object holding a batch"
        )
    key, revision = ("id", "B") if "id" in data else ("batch_id", "A")
    if key not in data:
        raise _neither_revision(data)
    try:
        if revision == "B":
            return Batch.model_validate(dict(data))
        return RevisionABatch.model_validate(dict(data)).to_batch()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'reply'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:3]
        )
        raise BatchShapeError(
            f"the reply looks like revision {revision}'s Batch object (it has `{key}`) but "
            f"{problems}; its fields are: {_fields_found(data)}"
        ) from None


# --------------------------------------------------------------------------- domain results


class Entity(BaseModel):
    """An extracted entity. Also reads the batch page's older `value`/`score` names."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    # Aliases rather than a Python validator: a batch decodes thousands of entities.
    text: str = Field(validation_alias=AliasChoices("text", "value"))
    type: str
    confidence: float = Field(ge=0.0, le=1.0, validation_alias=AliasChoices("confidence", "score"))
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=0)
    context: str | None = None


class ExtractResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    entities: list[Entity]
    structured_result: dict[str, Any] | None = None


class SummarizeResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    summary: str
    input_chars: int = Field(ge=0)
    output_chars: int = Field(ge=0)


class LabelScore(BaseModel):
    label: str
    score: float
    rubric: str = ""


class ClassifyResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    top_label: str
    scores: dict[str, float]
    reasoning: str | None = None
    labels: list[LabelScore] | None = None


DomainResult = ExtractResult | SummarizeResult | ClassifyResult


# What a results store keeps of each domain result: the fields an enriched dataset is built
# from. Validating only these skips the rest (entity contexts, reasoning, rubrics) in the
# parser. They are TypedDicts, validated into plain dicts: a batch decodes thousands of
# entities, and dicts cost a third of the objects of models and serialise with orjson.
class StoredEntity(TypedDict):
    text: Annotated[str, Field(validation_alias=AliasChoices("text", "value"))]
    type: str
    confidence: Annotated[
        float, Field(ge=0.0, le=1.0, validation_alias=AliasChoices("confidence", "score"))
    ]
    start: NotRequired[Annotated[int | None, Field(ge=0)]]
    end: NotRequired[Annotated[int | None, Field(ge=0)]]


class StoredExtract(TypedDict):
    entities: list[StoredEntity]


class StoredSummary(TypedDict):
    summary: str


class StoredClassification(TypedDict):
    top_label: str
    scores: dict[str, float]


# --------------------------------------------------------------------------- output lines


class Message(BaseModel):
    role: str = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: Message
    finish_reason: str | None = "stop"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    """`response.body` of an output line. Only `model` and `choices` are required: the docs'
    own samples omit the rest (spec §3.2)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    object: str = "chat.completion"
    created: int | None = None
    model: str
    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models` (spec §5.4), in OpenAI's shape."""

    id: str
    object: Literal["model"] = "model"
    # GAP: `created` and `owned_by` of a model are undocumented; OpenAI's SDK requires both.
    created: int = 0
    owned_by: str = "scaledown"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LineResponse(BaseModel):
    status_code: int = 200
    body: ChatCompletion


class LineErrorCode(StrEnum):
    """GAP: the docs type a per-line error as `{code, message}` without a vocabulary. Ours:"""

    INVALID_REQUEST = "invalid_request"  # the line itself is wrong; retrying cannot help
    SERVER_ERROR = "server_error"  # the backend failed on this line; a retry may succeed
    RATE_LIMITED = "rate_limited"  # the backend shed this line; a retry may succeed

    @property
    def retryable(self) -> bool:
        return self is not LineErrorCode.INVALID_REQUEST


class LineError(BaseModel):
    code: str
    message: str

    @property
    def retryable(self) -> bool:
        try:
            return LineErrorCode(self.code).retryable
        except ValueError:
            return False


class DecodeError(ValueError):
    """An output line whose content is not a valid domain result."""


class OutputLine(BaseModel):
    """One line of `GET /v1/batches/{id}/output` (spec §3.1)."""

    custom_id: str
    response: LineResponse | None = None
    error: LineError | None = None

    @model_validator(mode="after")
    def _one_of_response_or_error(self) -> OutputLine:
        if self.response is None and self.error is None:
            raise ValueError("an output line needs a response or an error")
        return self

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None

    def decode(self, model: str | None = None) -> DomainResult:
        """Parse `choices[0].message.content` into the domain result of its model.

        `model` is what the caller asked for; it wins over the echoed `body.model`.
        Raises DecodeError when the content is not JSON or does not fit the model.
        """
        if self.response is None:
            raise DecodeError(f"line {self.custom_id!r} has no response")
        from batchapi.registry import decode_content  # the registry imports this module

        name = model or self.response.body.model
        content = self.response.body.choices[0].message.content
        return decode_content(self.custom_id, name, content)  # type: ignore[return-value]


# --------------------------------------------------------------------------- JSONL helpers


def encode_jsonl(lines: Iterable[RequestLine]) -> bytes:
    return "".join(line.to_json() + "\n" for line in lines).encode("utf-8")


def iter_jsonl(payload: bytes | str) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL payload, skipping blank lines and CRs (GAP: our rule)."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    stripped = text.strip()
    if stripped.startswith("{") and "\n" in stripped:
        # A single (possibly pretty-printed) JSON object is a one-item batch (spec §1).
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            yield whole
            return
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(item, dict):
            raise ValueError(f"line {number} is not a JSON object")
        yield item
