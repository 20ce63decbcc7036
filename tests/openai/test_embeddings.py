"""OpenAI's Embeddings API (`client.embeddings.create`) with the official SDK on a live orchestratord:
the mock engine, the vLLM and Ollama fakes (speaking their engines' bytes), floats and base64, the
job behind each request, and what is refused by name."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.contract.test_sse_events import validate_stream
from tests.fakes.engines.asgi import fake_embedding
from tests.fakes.engines.ollama import OllamaEngine, unit
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import last_post, sdk, served, vllm_and_mock
from worker_adapters.mock import EMBEDDING_DIMS, embedding_of

TEXTS = ["the river runs", "a stone", "日本 🙂"]


def as_float32(vector: tuple[float, ...] | list[float]) -> list[float]:
    """`vector` as 32-bit floats hold it (the job's log keeps the engine's vectors so)."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def test_each_input_gets_its_vector_in_order_floats_and_base64(server: LoopbackServer) -> None:
    client = sdk(server)
    raw = client.embeddings.with_raw_response.create(model="mock", input=TEXTS)  # the SDK asks base64
    answer = raw.parse()
    assert [item.index for item in answer.data] == [0, 1, 2] and answer.model == "mock"
    assert [item.embedding for item in answer.data] == [as_float32(embedding_of("mock", t)) for t in TEXTS]
    assert len(answer.data[0].embedding) == EMBEDDING_DIMS
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3 + 2 + 2  # the mock counts words
    floats = client.embeddings.create(model="mock", input="a stone", encoding_format="float")
    assert floats.data[0].embedding == answer.data[1].embedding  # the same text embeds the same
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        body = {"model": "mock", "input": "a stone", "encoding_format": "base64"}
        b64 = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
        job = http.get(f"/v1/tasks/{raw.headers['x-job-id']}").json()
        events = read_events(http, f"/v1/tasks/{raw.headers['x-job-id']}/stream")
    assert list(struct.unpack(f"<{EMBEDDING_DIMS}f", base64.b64decode(b64))) == answer.data[1].embedding
    # the job like any other: succeeded, the tokens read counted, its stream as the contract says
    assert job["state"] == "succeeded" and job["tokens_out"] == 0 and job["text"] == ""
    validate_stream(events)
    assert [e.data["index"] for e in events if e.event == "embedding"] == [0, 1, 2]


def test_engines_vectors_come_back_as_they_sent_them(make_server: Callable[..., LoopbackServer]) -> None:
    """vLLM's `/v1/embeddings` (a pooling model) and Ollama's `/api/embed`: every input in one request,
    the vectors and the engine's token count back unchanged."""
    with served(VllmEngine()) as vllm, served(OllamaEngine()) as ollama:
        replicas = [{"id": "r0", "url": ollama.url}]  # type: ignore[attr-defined]
        ollama_pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"], "replicas": replicas}
        server = make_server(pools=vllm_and_mock(vllm.url, ollama_pool))  # type: ignore[attr-defined]
        client = sdk(server)
        from_vllm = client.embeddings.create(model="qwen", input=TEXTS)
        sent_vllm = last_post(vllm)
        from_ollama = client.embeddings.create(model="llama3.2", input=TEXTS, encoding_format="float")
        sent_ollama = last_post(ollama)
    expected = [fake_embedding(text) for text in TEXTS]
    assert [item.embedding for item in from_vllm.data] == expected
    assert [item.embedding for item in from_ollama.data] == expected
    assert from_vllm.usage.prompt_tokens == from_ollama.usage.prompt_tokens == 7  # the fakes count words
    assert sent_vllm == {"model": "Qwen/Qwen2.5-7B-Instruct", "input": TEXTS, "encoding_format": "float"}
    assert sent_ollama["input"] == TEXTS and sent_ollama["truncate"] is False  # too long is refused, not cut


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": [15339, 1917]}, "input", "token ids are not supported"),
        ({"input": [[15339], [1917]]}, "input", "token ids are not supported"),
        ({"input": "x", "dimensions": 8193}, "dimensions", "less than or equal to 8192"),
        ({"input": ""}, "input", "input[0]: an empty text cannot be embedded"),
        ({"input": ["x", ""]}, "input", "input[1]: an empty text cannot be embedded"),
        ({"input": []}, "input", "give at least one text"),
        ({"input": ["x"] * 2049}, "input", "2049 texts, more than 2048 a request"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
    ],
)
def test_what_cannot_be_embedded_is_refused_by_name(
    server: LoopbackServer, body: dict[str, object], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).post("/embeddings", body={"model": "mock", **body}, cast_to=object)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and says in error["message"], error


def test_dimensions_reach_the_engines_that_take_them(make_server: Callable[..., LoopbackServer]) -> None:
    """`dimensions` (a Matryoshka model's shorter vectors): vLLM and Ollama are sent it (Ollama answers
    the first numbers, normalized again); the mock answers that many numbers; a model only llama-server
    pools serve is refused, naming `dimensions`."""
    with served(VllmEngine()) as vllm, served(OllamaEngine()) as ollama:
        llama = {
            "id": "l",
            "engine": "llamacpp",
            "models": ["gguf"],
            "replicas": [{"id": "r0", "url": "http://127.0.0.1:9"}],
        }
        replicas = [{"id": "r0", "url": ollama.url}]  # type: ignore[attr-defined]
        ollama_pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"], "replicas": replicas}
        server = make_server(pools=vllm_and_mock(vllm.url, llama, ollama_pool))  # type: ignore[attr-defined]
        client = sdk(server)
        client.embeddings.create(model="qwen", input="x", dimensions=4)
        sent = last_post(vllm)
        from_ollama = client.embeddings.create(model="llama3.2", input=TEXTS, dimensions=2)
        sent_ollama = last_post(ollama)
        short = client.embeddings.create(model="mock", input="a stone", dimensions=8, encoding_format="float")
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="gguf", input="x", dimensions=8)
    assert sent["dimensions"] == 4
    assert sent_ollama["dimensions"] == 2
    assert [item.embedding for item in from_ollama.data] == [
        as_float32(unit(fake_embedding(t)[:2])) for t in TEXTS
    ]
    assert short.data[0].embedding == as_float32(embedding_of("mock", "a stone", 8))
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "dimensions", error


def test_an_engine_that_ignores_dimensions_is_a_502_saying_so(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """An Ollama from before `/api/embed` took `dimensions` answers whole vectors: the client is told
    so, not handed vectors of another size than it asked for."""
    old = OllamaEngine()
    old.shortens = False
    with served(old) as ollama:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"],
                "replicas": [{"id": "r0", "url": ollama.url}]}  # type: ignore[attr-defined]  # fmt: skip
        client = sdk(make_server(pools=[pool]))
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="llama3.2", input=TEXTS, dimensions=2)
        whole = client.embeddings.create(model="llama3.2", input=TEXTS, encoding_format="float")
    assert caught.value.status_code == 502
    assert "ollama sent embeddings of 4 numbers, not the 2 asked (dimensions)" in str(caught.value)
    assert [item.embedding for item in whole.data] == [fake_embedding(t) for t in TEXTS]


def test_an_embeddings_job_is_no_response(server: LoopbackServer) -> None:
    """The Responses routes read any generation job as a response; an embeddings job is none: 404."""
    client = sdk(server)
    job = client.embeddings.with_raw_response.create(model="mock", input="x").headers["x-job-id"]
    response_id = "resp_" + job.replace("-", "")
    with pytest.raises(openai.NotFoundError, match="is an embeddings job, not a response"):
        client.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="mock", input="go on", previous_response_id=response_id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "previous_response_id"


def test_a_model_no_engine_embeds_is_refused_naming_it(make_server: Callable[..., LoopbackServer]) -> None:
    """TGI's generate routes serve no embeddings: a model only TGI serves is refused, naming `model`."""
    tgi = {
        "id": "t",
        "engine": "tgi",
        "models": ["tiny"],
        "replicas": [{"id": "r0", "url": "http://127.0.0.1:9"}],
    }
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(make_server(pools=[tgi])).embeddings.create(model="tiny", input="x")
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "model", error
    assert "embeddings are not served by the engines serving 'tiny' (tgi)" in error["message"], error


def test_an_engine_that_fails_is_a_502(
    make_server: Callable[..., LoopbackServer],
) -> None:
    with served(VllmEngine(http_status=500, error_message="pooling failed")) as vllm:
        server = make_server(pools=vllm_and_mock(vllm.url))  # type: ignore[attr-defined]
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(server).embeddings.create(model="qwen", input="x")
    assert caught.value.status_code == 502 and "pooling failed" in caught.value.message
