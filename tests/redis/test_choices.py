"""Several choices (`n`, a list of prompts) in a deployment of two replicas on one Redis: each choice's
job is one like any other, placed wherever the deployment places it, and either replica answers with
every choice, whole and streamed, and reads every choice's job."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.redis.conftest import RedisServer, start_deployment

pytestmark = pytest.mark.redis


def test_either_replica_answers_with_every_choice(redis_server: RedisServer, tmp_path: Path) -> None:
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        clients = [
            openai.OpenAI(base_url=f"{r.base_url}/v1", api_key="unused", max_retries=0) for r in deployment
        ]

        def alone(prompt: str, seed: int) -> str:
            answer = clients[0].completions.create(model="mock", prompt=prompt, max_tokens=6, seed=seed)
            return answer.choices[0].text

        expected = [alone("x", 1), alone("x", 2), alone("y", 1), alone("y", 2)]  # the k-th choice: seed + k
        answers = [
            clients[i % 2].completions.with_raw_response.create(
                model="mock", prompt=["x", "y"], n=2, max_tokens=6, seed=1
            )
            for i in range(4)
        ]
        streamed = list(
            clients[1].chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=6, n=3, stream=True
            )
        )
        with httpx.Client(timeout=10) as http:
            states = [
                http.get(f"{deployment[(i + 1) % 2].base_url}/v1/tasks/{job}").json()["state"]
                for i, answer in enumerate(answers)
                for job in answer.headers["x-job-id"].split(", ")
            ]
    for answer in answers:
        assert [c.text for c in answer.parse().choices] == expected
    assert states == ["succeeded"] * 16
    finishes = sorted(c.choices[0].index for c in streamed if c.choices and c.choices[0].finish_reason)
    assert finishes == [0, 1, 2]
