"""Embeddings in a deployment of two replicas on one Redis: a request to either replica is answered
with every input's vector, whichever replica's engine ran it, and the job reads the same on both."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import openai
import pytest

from tests.redis.conftest import RedisServer, start_deployment
from worker_adapters.mock import embedding_of

pytestmark = pytest.mark.redis


def test_either_replica_answers_with_every_vector(redis_server: RedisServer, tmp_path: Path) -> None:
    texts = ["the river", "a stone", "日本"]
    expected = [list(struct.unpack("<16f", struct.pack("<16f", *embedding_of("mock", t)))) for t in texts]
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        clients = [
            openai.OpenAI(base_url=f"{r.base_url}/v1", api_key="unused", max_retries=0) for r in deployment
        ]
        answers = [
            clients[i % 2].embeddings.with_raw_response.create(model="mock", input=texts) for i in range(6)
        ]
        with httpx.Client(timeout=10) as http:
            jobs = [
                http.get(f"{deployment[(i + 1) % 2].base_url}/v1/tasks/{a.headers['x-job-id']}").json()
                for i, a in enumerate(answers)
            ]
    for answer in answers:
        assert [item.embedding for item in answer.parse().data] == expected
    assert {job["state"] for job in jobs} == {"succeeded"}
