"""A second, independent OpenAI-compatible client (Hugging Face's `InferenceClient`, its own HTTP and
SSE code) reads the same surface: whole and streamed chat completions, and the job behind them."""

from __future__ import annotations

import httpx
from huggingface_hub import InferenceClient

from tests.fakes.servers import LoopbackServer

MESSAGES = [{"role": "user", "content": "tell me about rivers"}]


def test_whole_and_streamed_chat_through_another_client(server: LoopbackServer) -> None:
    client = InferenceClient(base_url=f"{server.base_url}/v1", api_key="unused")
    whole = client.chat_completion(messages=MESSAGES, model="mock", max_tokens=5, seed=3)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 5
    job_id = whole.id.removeprefix("chatcmpl-")
    job = httpx.get(f"{server.base_url}/v1/tasks/{job_id}", timeout=10).json()
    assert job["state"] == "succeeded" and whole.choices[0].message.content == job["text"]
    chunks = list(client.chat_completion(messages=MESSAGES, model="mock", max_tokens=5, seed=3, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # the same seed, the same answer
    assert chunks[-1].choices[0].finish_reason == "length"
