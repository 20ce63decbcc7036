"""POST /v1/embeddings: OpenAI's Embeddings API (`client.embeddings.create`).

The request is a job like any other (admission, the fair queue, placement on a pool serving the model
whose engine serves embeddings, `GET /v1/tasks/{id}` through `X-Job-Id`), whose engine request asks for
a vector of each input: the job's log holds one `embedding` event per input, then `end` with the tokens
read. The answer is collected from the log, whole; a client that leaves cancels the job, as for a chat
completion.
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.deps import Caller, get_json_caller
from orchestratord.api.errors import from_event, to_openai_response
from orchestratord.api.openai.schemas import openai_errors
from orchestratord.api.openai.streaming import tail, unless_gone
from orchestratord.api.schemas import Text
from orchestratord.api.submission import submit_body
from orchestratord.core.tasks import EMBEDDINGS, TaskSpec, new_job_id
from orchestratord.errors import InvalidParams
from orchestratord.logs import bind
from orchestratord.services import Services

router = APIRouter(tags=["openai"])
MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
MAX_DIMENSIONS = 8192  # above the widest embedding models (OpenAI's largest has 3,072)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: Text = Field(min_length=1, max_length=256)
    input: (
        Annotated[Text, Field(max_length=1_000_000)]
        | list[Annotated[Text, Field(max_length=1_000_000)]]
        | list[int]
        | list[list[int]]
    ) = Field(description="A text, or a list of texts (at most 2048), each embedded on its own, none "
                          "empty. Token ids are refused: send the text.")  # fmt: skip
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float: lists of numbers; base64: each vector's 32-bit floats, "
        "little-endian, base64 (what the OpenAI SDKs ask for and decode)."
    )  # fmt: skip
    dimensions: int | None = Field(
        default=None, ge=1, le=MAX_DIMENSIONS,
        description="The vector's first this many numbers, for a model trained so (Matryoshka); passed to "
        "engines that take it (vLLM, Ollama, OpenAI-compatible servers), refused by name elsewhere.",
    )  # fmt: skip
    user: Text | None = Field(default=None, max_length=256)

    def texts(self) -> tuple[str, ...]:
        """The texts to embed; InvalidParams naming `input` for none, an empty one, too many, or token
        ids."""
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise InvalidParams("input: give at least one text to embed", param="input")
        if len(texts) > MAX_INPUTS:
            raise InvalidParams(
                f"input: {len(texts)} texts, more than {MAX_INPUTS} a request; split them", param="input"
            )
        if not all(isinstance(each, str) for each in texts):
            raise InvalidParams(
                "input: token ids are not supported, as they would be read with the engine's tokenizer; "
                "send the text (LangChain: check_embedding_ctx_length=False)",
                param="input",
            )
        strings = tuple(str(each) for each in texts)
        if "" in strings:
            raise InvalidParams(
                f"input[{strings.index('')}]: an empty text cannot be embedded", param="input"
            )
        return strings


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


@router.post(
    "/v1/embeddings",
    response_class=Response,
    responses={
        200: {
            "model": EmbeddingList,
            "description": "A vector for each input, in the inputs' order.",
            "headers": {"X-Job-Id": {"schema": {"type": "string"}, "description": "The job serving it."}},
        },
        # 404, 502, 504: the job ended in an error (its state lost; the engine failed or went silent)
        **openai_errors(400, 404, 409, 413, 415, 429, 502, 503, 504),
    },
    operation_id="createEmbedding",
)
async def create_embedding(
    body: EmbeddingRequest, request: Request, caller: Annotated[Caller, Depends(get_json_caller)]
) -> Response:
    spec = TaskSpec(
        job_id=new_job_id(), tenant=caller.tenant, model_ref=body.model, max_tokens=1, inputs=body.texts(),
        dimensions=body.dimensions, correlation_id=caller.correlation_id,
    )  # fmt: skip
    if body.user is not None:
        bind(user=body.user)
    try:
        result = await submit_body(caller, spec, request, body)
    except InvalidParams as exc:
        raise _no_embeddings(exc) if exc.param == EMBEDDINGS else exc from None
    headers = {"X-Job-Id": result.job_id, **result.headers}
    answer = await unless_gone(request, _collect(caller.services, result.job_id))
    if answer is None:
        return Response(status_code=499)  # nobody is there to read it
    ending, vectors, data = answer
    if ending == "error":
        response = to_openai_response(from_event(data))
        response.headers.update(headers)
        return response
    tokens = int(data.get("tokens_in", 0))
    rendered = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(b64, body.encoding_format)}
            for index, b64 in sorted(vectors.items())
        ],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(orjson.dumps(rendered), media_type="application/json", headers=headers)


def _no_embeddings(exc: InvalidParams) -> InvalidParams:
    """Admission's refusal of a model whose engines serve no embeddings (TGI's generate routes), said
    of the request's `model`."""
    said = exc.message.replace(f"{EMBEDDINGS} is not supported by", "embeddings are not served by", 1)
    hint = "embed with a model served by vLLM, llama-server, Ollama or an OpenAI-compatible server"
    return InvalidParams(said.replace("leave it out", hint), param="model")


async def _collect(services: Services, job_id: str) -> tuple[str, dict[int, str], dict[str, Any]]:
    """The job's vectors by input index (base64, as the log holds them), its ending and its data."""
    vectors: dict[int, str] = {}
    async with tail(services, job_id) as events:
        while True:
            for event in await anext(events):
                if isinstance(event, BaseException):
                    raise event
                if event.name == "embedding":
                    data = orjson.loads(event.data)
                    vectors[int(data["index"])] = data["b64"]
                elif event.name in ("end", "error"):
                    return event.name, vectors, orjson.loads(event.data)


def _encoded(b64: str, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return b64
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
