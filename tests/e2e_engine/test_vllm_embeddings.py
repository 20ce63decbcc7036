"""orchestratord → the `vllm` adapter → a real vLLM (its CPU build) serving the tiny random Llama as an
embedding model (`--runner pooling --convert embed`): `POST /v1/embeddings` answers what vLLM computed,
and `dimensions` reaches it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.api.helpers import wait_for
from tests.e2e_engine.vllm_server import VllmServer
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def pooling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(
        tmp_path_factory.mktemp("vllm-embed"),
        max_model_len=512,
        extra=("--runner", "pooling", "--convert", "embed"),
    )
    try:
        yield server.start()
    finally:
        server.stop()


def test_embeddings_come_back_as_vllm_computed_them(
    make_server: Callable[..., LoopbackServer], pooling: VllmServer, tmp_path: Path
) -> None:
    texts = ["The river", "a stone in the water", "日本"]
    direct = httpx.post(f"{pooling.url}/v1/embeddings", json={"model": "tiny", "input": texts}, timeout=60)
    assert direct.status_code == 200, direct.text
    pool = {"id": "v", "engine": "vllm", "models": ["tiny"], "replicas": [{"id": "a", "url": pooling.url}]}
    server = make_server(pools=[pool], health_interval_s=0.5)
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        wait_for(lambda: http.get("/v1/pools/v/health").json()["ready"], 30)
    client = sdk(server)
    ours = client.embeddings.create(model="tiny", input=texts)
    said = sorted(direct.json()["data"], key=lambda item: item["index"])
    assert [item.index for item in ours.data] == [0, 1, 2] and len(said[0]["embedding"]) > 1
    for item, theirs in zip(ours.data, said, strict=True):
        assert item.embedding == pytest.approx(theirs["embedding"], rel=1e-6, abs=1e-7)
    assert ours.usage.prompt_tokens == direct.json()["usage"]["prompt_tokens"]
    # `dimensions` reaches vLLM, which refuses it for a model not trained for shorter vectors
    said_short = httpx.post(
        f"{pooling.url}/v1/embeddings", json={"model": "tiny", "input": texts, "dimensions": 8}, timeout=60
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", input=texts, dimensions=8)
    assert said_short.status_code == 400, said_short.text
    assert said_short.json()["error"]["message"] in caught.value.message
