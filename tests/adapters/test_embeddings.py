"""An engine's embeddings answer read strictly: one list of numbers per input, in order, or the
engine's fault, named."""

from __future__ import annotations

import pytest

from worker_adapters._wire import embedded
from worker_adapters.base import Embedding, EngineInternal, Finished, SubmitRequest

REQ = SubmitRequest(task_id="t1", model="m", max_tokens=1, inputs=("a", "b"))


def test_one_vector_an_input_then_the_count() -> None:
    assert embedded([[1, 0.5], [-2.0, 0]], REQ, "vllm", 4) == [
        Embedding(0, (1.0, 0.5)),
        Embedding(1, (-2.0, 0.0)),
        Finished("eos", prompt_tokens=4, completion_tokens=0),
    ]


@pytest.mark.parametrize(
    ("vectors", "says"),
    [
        ([[1.0]], "sent 1 embeddings for 2 inputs"),
        (None, "sent NoneType embeddings for 2 inputs"),
        ([[1.0], "AAAA"], "not a list of numbers"),
        ([[1.0], [True]], "not a list of numbers"),
        # llama-cpp-python on a model without pooling (what it sends for such a model)
        ([[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6]]], "a vector for each token of an input"),
    ],
)
def test_anything_else_is_the_engines_fault(vectors: object, says: str) -> None:
    with pytest.raises(EngineInternal, match=says):
        embedded(vectors, REQ, "vllm", None)
