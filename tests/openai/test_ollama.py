"""What the OpenAI surfaces ask of an Ollama pool (its native API, the protocol-faithful fake), through
the official SDK: structured output (`response_format`, the Responses API's `text.format`) becomes
Ollama's `format`, "json" or the JSON schema itself, and the SDK's `parse` reads the answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk, served

ASK = [{"role": "user", "content": "the weather in Tokyo, as JSON"}]


class Weather(BaseModel):
    city: str
    celsius: int


SCHEMA = Weather.model_json_schema()


@pytest.fixture
def engine() -> Iterator[OllamaEngine]:
    with served(OllamaEngine(tokens=('{"city": ', '"Tokyo", ', '"celsius": 21}'), eos_after=3)) as fake:
        yield fake


@pytest.fixture
def client(make_server: Callable[..., LoopbackServer], engine: OllamaEngine) -> openai.OpenAI:
    pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"],
            "replicas": [{"id": "r0", "url": engine.url}]}  # type: ignore[attr-defined]  # fmt: skip
    return sdk(make_server(pools=[pool]))


def test_a_response_format_becomes_ollamas_format(client: openai.OpenAI, engine: OllamaEngine) -> None:
    schema_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
    }
    done = client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format=schema_format,  # type: ignore[arg-type]
    )
    assert engine.record.last("/api/chat").body["format"] == SCHEMA
    assert Weather.model_validate_json(done.choices[0].message.content or "") == Weather(
        city="Tokyo", celsius=21
    )
    client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format={"type": "json_object"},  # type: ignore[arg-type]
    )
    assert engine.record.last("/api/chat").body["format"] == "json"
    client.chat.completions.create(
        model="llama3.2",
        messages=ASK,
        max_tokens=16,
        response_format={"type": "text"},  # type: ignore[arg-type]
    )
    assert "format" not in engine.record.last("/api/chat").body


def test_the_sdks_parse_reads_a_structured_answer_from_ollama(
    client: openai.OpenAI, engine: OllamaEngine
) -> None:
    parsed = client.chat.completions.parse(
        model="llama3.2", messages=ASK, max_tokens=16, response_format=Weather
    )  # type: ignore[arg-type]
    assert parsed.choices[0].message.parsed == Weather(city="Tokyo", celsius=21)
    sent = engine.record.last("/api/chat").body["format"]
    assert sent["properties"].keys() == {"city", "celsius"}  # the SDK's strict form of the schema
    response = client.responses.parse(model="llama3.2", input="the weather in Tokyo", text_format=Weather)
    assert response.output_parsed == Weather(city="Tokyo", celsius=21)
    assert engine.record.last("/api/chat").body["format"]["properties"].keys() == {"city", "celsius"}
