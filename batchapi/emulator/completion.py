"""The `chat.completion` the engine's result is wrapped in: in a batch output line and as the
answer of the synchronous `POST /v1/chat/completions`."""

from __future__ import annotations

import secrets

from batchapi.models import (
    AnyBody,
    ChatCompletion,
    Choice,
    Message,
    Usage,
    approx_tokens,
)


def chat_completion(body: AnyBody, content: str, created: int) -> ChatCompletion:
    # GAP: `created` and `usage` are documented for the synchronous endpoint only (spec
    # §3.2); we emit the full OpenAI shape everywhere, with prompt tokens approximated from
    # the text and no completion tokens, as the docs say of the synchronous endpoint.
    prompt_tokens = approx_tokens(body.text)
    return ChatCompletion(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=created,
        model=body.model,
        choices=[Choice(message=Message(content=content))],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens),
    )
