"""The synchronous OpenAI-compatible endpoints, driven by the real `openai` SDK over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletion as SdkChatCompletion

from batchapi.emulator import engine
from batchapi.emulator.openai_compat import text_of_messages
from batchapi.emulator.runner import RunningEmulator
from batchapi.models import (
    ClassifyBody,
    ClassifyResult,
    ExtractBody,
    ExtractResult,
    SummarizeBody,
    SummarizeResult,
    approx_tokens,
)
from tests.batchapi.emulator.test_app import LABELS, TEXT, client_for
from tests.conftest import TEST_API_KEY


@pytest.fixture
def sdk(emulator: RunningEmulator) -> Iterator[openai.OpenAI]:
    # The API takes its key in x-api-key; the SDK's own api_key (a Bearer header) is unused.
    client = openai.OpenAI(
        base_url=f"{emulator.base_url}/v1",
        api_key="not-used",
        default_headers={"x-api-key": TEST_API_KEY},
        max_retries=0,
    )
    yield client
    client.close()


def test_sdk_summarize_from_messages_is_the_engines_result(
    sdk: openai.OpenAI, emulator: RunningEmulator
) -> None:
    completion = sdk.chat.completions.create(
        model="summarize",
        messages=[{"role": "user", "content": TEXT}],
        max_tokens=40,
        extra_body={"instructions": "One sentence."},
    )
    assert isinstance(completion, SdkChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == "summarize"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    result = SummarizeResult.model_validate_json(completion.choices[0].message.content or "")
    expected = engine.run(SummarizeBody(text=TEXT, instructions="One sentence.", max_tokens=40))
    assert result == expected
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == approx_tokens(TEXT)
    assert completion.usage.completion_tokens == 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens
    assert emulator.stats()["chat_completions"] == 1


def test_sdk_extract_and_classify_with_the_flat_batch_body(sdk: openai.OpenAI) -> None:
    entities = {"person": "a person's name", "org": "a company"}
    extracted = sdk.chat.completions.create(
        model="extract", messages=[], extra_body={"text": TEXT, "entities": entities}
    )
    result = ExtractResult.model_validate_json(extracted.choices[0].message.content or "")
    assert result == engine.run(ExtractBody(text=TEXT, entities=entities))
    assert {entity.text for entity in result.entities} >= {"Jane Smith"}

    labels = [label.model_dump() for label in LABELS]
    classified = sdk.chat.completions.create(
        model="classify",
        messages=[{"role": "user", "content": [{"type": "text", "text": TEXT}]}],
        extra_body={"labels": labels},
    )
    topic = ClassifyResult.model_validate_json(classified.choices[0].message.content or "")
    assert topic == engine.run(ClassifyBody(text=TEXT, labels=LABELS))
    assert topic.top_label == "billing"


def test_flat_body_over_plain_http_wins_over_messages(emulator: RunningEmulator) -> None:
    with client_for(emulator) as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "summarize",
                "text": TEXT,
                "messages": [{"role": "user", "content": "Ignored. Quite ignored."}],
            },
        )
    assert response.status_code == 200, response.text
    content = json.loads(response.json()["choices"][0]["message"]["content"])
    assert content["input_chars"] == len(TEXT)


def test_sdk_lists_the_three_models(sdk: openai.OpenAI) -> None:
    models = list(sdk.models.list())
    assert [model.id for model in models] == ["extract", "summarize", "classify"]
    assert {model.object for model in models} == {"model"}


def test_sdk_errors_are_the_sdks_typed_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'gpt-4o' is not served"):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.chat.completions.create(model="extract", messages=[{"role": "user", "content": TEXT}])
    assert caught.value.body is not None
    assert "body.entities: Field required" in str(caught.value)
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(model="summarize", messages=[{"role": "system", "content": ""}])
    with pytest.raises(openai.BadRequestError, match="stream"):
        sdk.chat.completions.create(
            model="summarize", messages=[{"role": "user", "content": TEXT}], stream=True
        )


def test_a_bearer_key_alone_is_refused_with_the_fix(emulator: RunningEmulator) -> None:
    bearer_only = openai.OpenAI(
        base_url=f"{emulator.base_url}/v1", api_key=TEST_API_KEY, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        bearer_only.models.list()
    bearer_only.close()
    assert "default_headers={'x-api-key': key}" in str(caught.value)
    assert TEST_API_KEY not in str(caught.value)
    assert caught.value.type == "authentication_error"
    with client_for(emulator, key="wrong-key") as client:
        wrong = client.post("/v1/chat/completions", json={"model": "summarize", "text": TEXT})
    assert wrong.status_code == 401
    assert emulator.stats()["chat_completions"] == 0


def test_text_of_messages_takes_user_text_only() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First part."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [{"type": "text", "text": "Second part."}, {"type": "image"}]},
    ]
    assert text_of_messages(messages) == "First part.\n\nSecond part."
    assert text_of_messages([{"role": "system", "content": "x"}]) is None
    assert text_of_messages("not a list") is None
