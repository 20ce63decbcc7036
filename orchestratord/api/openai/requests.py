"""OpenAI request bodies, and how each becomes a job (`TaskSpec`).

Fields orchestratord passes on to the engines are accepted (tools, response formats and log
probabilities only where the engines serving the model take them, a 400 naming them otherwise); fields
it cannot honour (several choices, logit bias, audio, …) are refused with a 400 that names them, never
silently dropped. Unknown fields are refused the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.schemas import (
    Effort,
    LogitBias,
    MinP,
    Penalty,
    RepetitionPenalty,
    Text,
    TokenIds,
    TopK,
    extended_sampling,
    json_text,
)
from orchestratord.core.tasks import Message, Priority, TaskSpec, new_job_id
from orchestratord.errors import InvalidParams

_STRICT = ConfigDict(extra="forbid", strict=True)  # no coercion: "3", 3.0, true are not integers
# service_tier → our classes: `flex` is OpenAI's cheaper, slower tier (our batch class); every other
# tier is interactive.
TIERS: dict[str, Priority] = {"auto": "interactive", "default": "interactive", "priority": "interactive",
                              "flex": "batch"}  # fmt: skip
# Accepted only at their neutral value: what orchestratord cannot pass on to every engine yet.
UNSUPPORTED = (
    "prediction", "audio", "modalities", "web_search_options", "store", "best_of", "verbosity",
    "prompt_cache_retention",
)  # fmt: skip
# Chat's function calling before tools (OpenAI's deprecated form, which older clients still send): a
# text completion has none.
LEGACY = ("functions", "function_call")
Verbosity = Literal["low", "medium", "high"]  # GPT-5's; "medium", its default, asks for nothing


def asks_for(name: str, value: Any) -> bool:
    """Whether an UNSUPPORTED field (or one of the Responses API's) asks for anything: it is set, and
    not to OpenAI's default. `include: ["reasoning.encrypted_content"]` (what stateless
    agents send with `store: false`) asks for the reasoning in a form to send back, and the reasoning
    item carries it in plain `content`, which nothing needs back: orchestratord leaves it out of the
    next turn. `message.output_text.logprobs` is honoured (the Responses API's log probabilities)."""
    if name == "include":
        return any(item not in INCLUDABLE for item in value or ())
    if name == "verbosity":
        return value not in (None, "medium")
    if name == "best_of":  # 1, OpenAI's default: the one completion is the best of one
        return value not in (None, 1)
    if name == "modalities":  # text, the default
        return value not in (None, [], ["text"])
    if name == "prompt_cache_retention":  # in memory, the default: what every engine's prefix cache does
        return value not in (None, "in_memory", "in-memory")
    return value not in (None, False, [], {})


# The Responses API's `include` values orchestratord honours
LOGPROBS_INCLUDED = "message.output_text.logprobs"
INCLUDABLE = frozenset({"reasoning.encrypted_content", LOGPROBS_INCLUDED})
# Passed to the engine as they are (chat only), for the engines that take them.
STRUCTURED = ("tools", "tool_choice", "response_format")
MAX_LOGPROBS = 20  # alternatives per token: OpenAI's limit, and vLLM's default `max_logprobs`
# Choices a request may ask for (`n`, times the prompts of a completion): each is a job of its own.
MAX_CHOICES = 128  # OpenAI's limit for `n`


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False
    # vLLM's extension (benchmark tools such as guidellm send it): `usage` on every chunk, as counted
    # so far (the prompt's count is orchestratord's estimate until the engine's arrives at the end).
    continuous_usage_stats: bool = False


class ContentPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Text = Field(max_length=1_000_000)


Content = Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[ContentPart], Field(max_length=256)]


class MessageFunctionCall(BaseModel):
    model_config = _STRICT
    name: Text = Field(min_length=1, max_length=256)
    arguments: Text = Field(max_length=1_000_000)  # JSON text, as the model wrote it


class FunctionDefinition(BaseModel):
    """One of `functions`, the deprecated form of a function tool."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Text | None = Field(default=None, max_length=100_000)
    parameters: dict[str, Any] | None = None


class FunctionName(BaseModel):
    """`function_call: {"name": ...}`: the model must call this function."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class MessageToolCall(BaseModel):
    """A tool call an assistant turn made, sent back with the conversation."""

    model_config = _STRICT
    id: Text = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: MessageFunctionCall


class ChatCompletionMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Optional only on an assistant turn that called tools (`check`).
    content: Content | None = None
    name: Text | None = Field(default=None, max_length=64)
    tool_calls: list[MessageToolCall] | None = Field(default=None, max_length=128)  # assistant turns
    tool_call_id: Text | None = Field(default=None, min_length=1, max_length=256)  # `tool` turns
    function_call: MessageFunctionCall | None = None  # an assistant turn's call, in the deprecated form
    # What the SDKs send back when a client appends a response's message as it came: ours is null.
    refusal: None = None
    # A thinking model's reasoning, on an assistant turn sent back as it came: accepted and left out,
    # as the chat templates of such models leave earlier turns' reasoning out
    reasoning: Text | None = Field(default=None, max_length=1_000_000)
    reasoning_content: Text | None = Field(default=None, max_length=1_000_000)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def check(self, index: int) -> None:
        """InvalidParams for a turn OpenAI's API would refuse: a tool result without the call it
        answers, tool fields on the wrong role, a turn with no content that called no tool."""
        where = f"messages[{index}]"
        if self.role == "tool" and self.tool_call_id is None:
            raise InvalidParams(f"{where}: a tool message needs tool_call_id, the id of the call it answers",
                                param=f"{where}.tool_call_id")  # fmt: skip
        if self.role != "tool" and self.tool_call_id is not None:
            raise InvalidParams(f"{where}: tool_call_id belongs on a message with role 'tool'",
                                param=f"{where}.tool_call_id")  # fmt: skip
        for field in ("tool_calls", "function_call"):
            if self.role != "assistant" and getattr(self, field) is not None:
                raise InvalidParams(f"{where}: {field} belongs on a message with role 'assistant'",
                                    param=f"{where}.{field}")  # fmt: skip
        if self.tool_calls and self.function_call:
            raise InvalidParams(f"{where}: send the call as tool_calls or as function_call, not both",
                                param=f"{where}.function_call")  # fmt: skip
        if self.role == "function" and self.name is None:
            raise InvalidParams(f"{where}: a function message needs name, the function whose result it is",
                                param=f"{where}.name")  # fmt: skip
        called = self.role == "assistant" and (self.tool_calls or self.function_call)
        if self.content is None and not called and self.role != "function":
            raise InvalidParams(f"{where}: content is required (it may be left out only on an assistant "
                                "message with tool_calls or function_call, and on a function message)",
                                param=f"{where}.content")  # fmt: skip

    def to_message(self, call_id: str | None = None) -> Message:
        """This turn for the engine. In the deprecated form, an assistant's `function_call` is a tool
        call with the id `call_id`, and a `function` turn the result of the call `call_id`."""
        calls = None
        if self.tool_calls:  # an empty list is no call
            calls = json_text("tool_calls", [call.model_dump() for call in self.tool_calls])
        elif self.function_call is not None:
            call = {"id": call_id, "type": "function", "function": self.function_call.model_dump()}
            calls = json_text("function_call", [call])
        if self.role == "function":
            return Message("tool", self.text(), None, call_id)
        return Message(_role(self.role), self.text(), calls, self.tool_call_id, self.name)


def chat_messages(messages: list[ChatCompletionMessage]) -> tuple[Message, ...]:
    """The turns for the engine, each checked. The deprecated form's calls have no ids: an assistant's
    `function_call` in turn i is the call `call_fn<i>`, and a `function` turn answers the latest call."""
    turns: list[Message] = []
    call_id: str | None = None
    for index, m in enumerate(messages):
        m.check(index)
        if m.function_call is not None:
            call_id = f"call_fn{index}"
        elif m.role == "function" and call_id is None:
            raise InvalidParams(
                f"messages[{index}]: a function message answers the function_call of an assistant message "
                "before it, and none came before",
                param=f"messages[{index}]",
            )
        turns.append(m.to_message(call_id if m.function_call is not None or m.role == "function" else None))
    return tuple(turns)


class OpenAIRequest(BaseModel):
    """The fields every OpenAI surface (Chat Completions, Completions, Responses) shares."""

    model_config = _STRICT
    model: Text = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    user: Text | None = Field(default=None, max_length=256)
    # OpenAI's successors of `user`: a stable id of the end user (into the request's log lines, as
    # `user`), and a key naming requests that share a prefix (placed together: orchestratord.cache_keys)
    safety_identifier: Text | None = Field(default=None, min_length=1, max_length=256)
    prompt_cache_key: Text | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, Text] | None = Field(default=None, max_length=16)
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    prompt_cache_retention: Literal["in_memory", "in-memory", "24h"] | None = Field(
        default=None,
        description="How long the engine keeps the prompt's cached prefix: in memory (in_memory, the "
        "default, and what every engine here does) asks for nothing; 24h is refused (no engine keeps one "
        "past its memory).",
    )
    # Passed on or refused by name, per surface: declared so that the errors can name them.
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = None

    @property
    def single_tool_call(self) -> bool | None:
        """`parallel_tool_calls: false` with tools: at most one call comes back (`TaskSpec`)."""
        return True if self.parallel_tool_calls is False and self.tools else None

    @property
    def client_ids(self) -> dict[str, Any]:
        """What the client says of its end user and request, for the request's log lines (never the
        prompt): the fields it set."""
        ids = {"user": self.user, "safety_identifier": self.safety_identifier, "metadata": self.metadata}
        return {name: value for name, value in ids.items() if value is not None}


class _Generation(OpenAIRequest):
    """What Chat Completions and Completions share."""

    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: Text | list[Text] | None = Field(default=None, max_length=16)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int | None = Field(
        default=None, ge=1, le=MAX_CHOICES,
        description="Choices (of each prompt): each is a job of its own, placed as any other; with a "
        "`seed`, the k-th choice (from 0) samples with `seed + k`, so that the choices differ. At most "
        "128 choices a request (prompts times n).",
    )  # fmt: skip
    stream_options: StreamOptions | None = None
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=128)
    function_call: Literal["none", "auto"] | FunctionName | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: LogitBias | None = None
    store: bool | None = None
    ignore_eos: bool | None = Field(
        default=None,
        description="vLLM's extension: generate max_tokens tokens, past the end-of-sequence token.",
    )
    # vLLM's sampling extensions (what models' cards recommend: Qwen's `top_k: 20`)
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    def prompts(self) -> list[str | tuple[int, ...] | None]:
        """The prompts, each a choice's (or `n` choices'), as text or token ids; chat has one, its
        messages (None)."""
        return [None]

    def fan_out(self, spec: TaskSpec) -> list[TaskSpec]:
        """One job a choice, in the choices' order (each prompt's `n` in turn): `spec` first, then its
        copies with ids of their own, each prompt's own, the k-th choice's seed `seed + k`. A prompt's
        `n` choices share a prompt cache key (the client's, else one of their own), so that placement
        puts them on one engine replica where it can take them: the engine reads their common prompt
        once (vLLM's prefix cache), as it does for its own `n`."""
        prompts, n = self.prompts(), self.n or 1
        if len(prompts) * n > MAX_CHOICES:
            raise InvalidParams(
                f"{len(prompts)} prompts times n={n} asks for {len(prompts) * n} choices, more than "
                f"{MAX_CHOICES}; send fewer in one request",
                param="n",
            )
        if n > 1 and self.continuous_usage:
            raise InvalidParams(
                "stream_options.continuous_usage_stats counts one choice's tokens; leave it out with n > 1",
                param="stream_options",
            )
        specs: list[TaskSpec] = []
        for prompt in prompts:
            key = spec.cache_key
            for k in range(n):
                seed = None if spec.seed is None else (spec.seed + k) % 2**63
                job_id = spec.job_id if not specs else new_job_id()
                if key is None and n > 1:  # a prompt's choices share its prefill where they can
                    key = f"choices:{job_id}"
                copy = replace(spec, job_id=job_id, seed=seed, cache_key=key)
                specs.append(copy if prompt is None else replace(copy, **_prompt_fields(prompt)))
        return specs

    def refuse_unsupported(self, *, chat: bool) -> None:
        """InvalidParams naming the first field set that orchestratord does not pass on."""
        for name in UNSUPPORTED if chat else (*UNSUPPORTED, *LEGACY, *STRUCTURED, "top_logprobs"):
            if asks_for(name, getattr(self, name, None)):
                raise InvalidParams(f"{name} is not supported by orchestratord yet; leave it out", param=name)

    def structured(self) -> dict[str, str | None]:
        """tools, tool_choice and response_format as JSON text for the engine. What asks for nothing is
        no request at all: `{"type": "text"}` (the default format), `tools: []` (which agent frameworks
        send when they have none), and `tool_choice` `auto` or `none` without tools."""
        fields = {name: getattr(self, name) for name in STRUCTURED}
        if self.functions is not None or self.function_call is not None:
            fields.update(self.legacy_tools())
        if _plain(fields["response_format"]):
            fields["response_format"] = None
        if not fields["tools"]:
            fields["tools"] = None
            if fields["tool_choice"] in ("auto", "none"):
                fields["tool_choice"] = None
        return {k: None if v is None else json_text(k, v) for k, v in fields.items()}

    def legacy_tools(self) -> dict[str, Any]:
        """`functions` and `function_call` as the tools and tool choice they name; InvalidParams for
        what OpenAI would refuse."""
        if self.tools or self.tool_choice is not None:
            name = "functions" if self.functions is not None else "function_call"
            raise InvalidParams(f"send {name} or tools and tool_choice, not both (functions is the older "
                                "form of tools)", param=name)  # fmt: skip
        functions = self.functions or []
        tools = [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in functions]
        choice: Any = self.function_call
        if isinstance(choice, FunctionName):
            if choice.name not in {f.name for f in functions}:
                raise InvalidParams(f"function_call names {choice.name!r}, which functions does not list",
                                    param="function_call")  # fmt: skip
            choice = {"type": "function", "function": {"name": choice.name}}
        return {"tools": tools, "tool_choice": choice}

    @property
    def legacy(self) -> bool:
        """Whether the model's call is answered in the deprecated form (`message.function_call`): the
        request gave `functions`."""
        return bool(self.functions)

    @property
    def single_tool_call(self) -> bool | None:
        """`parallel_tool_calls: false` with tools, or `functions` (one call a turn): at most one call
        comes back (`TaskSpec`)."""
        return True if self.legacy else super().single_tool_call

    def _spec(
        self, *, job_id: str, tenant: str, correlation_id: str | None, max_tokens: int, **inputs: Any
    ) -> TaskSpec:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return TaskSpec(
            job_id=job_id,
            tenant=tenant,
            model_ref=self.model,
            max_tokens=max_tokens,
            priority=TIERS[self.service_tier or "auto"],
            seed=self.seed,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            **extended_sampling(self.top_k, self.min_p, self.repetition_penalty),
            ignore_eos=True if self.ignore_eos else None,
            logit_bias=json_text("logit_bias", self.logit_bias) if self.logit_bias else None,
            correlation_id=correlation_id,
            cache_key=self.prompt_cache_key,
            single_tool_call=self.single_tool_call,
            **inputs,
        )


class ChatCompletionRequest(_Generation):
    messages: list[ChatCompletionMessage] = Field(min_length=1, max_length=1024)
    reasoning_effort: Effort | None = None
    verbosity: Verbosity | None = None
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, max_length=2)
    # vLLM's and llama.cpp's extension: variables for the model's chat template (Qwen3's
    # `enable_thinking: false` turns its thinking off); `{}` asks for nothing
    chat_template_kwargs: dict[str, Any] | None = Field(default=None, max_length=64)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_spec(self, *, job_id: str, tenant: str, correlation_id: str | None, max_tokens: int) -> TaskSpec:
        self.refuse_unsupported(chat=True)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParams("top_logprobs needs logprobs: true", param="top_logprobs")
        messages = chat_messages(self.messages)
        return self._spec(
            job_id=job_id, tenant=tenant, correlation_id=correlation_id, max_tokens=max_tokens,
            messages=messages, logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            reasoning_effort=self.reasoning_effort, **self.structured(),
            chat_template_kwargs=json_text("chat_template_kwargs", self.chat_template_kwargs)
            if self.chat_template_kwargs
            else None,
        )  # fmt: skip


class CompletionRequest(_Generation):
    prompt: (
        Annotated[Text, Field(max_length=1_000_000)]
        | Annotated[
            list[Annotated[Text, Field(max_length=1_000_000)]], Field(min_length=1, max_length=MAX_CHOICES)
        ]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]
    ) = Field(
        description="One prompt, or several (each its own choice, or `n` of them, in order); as text or as "
        "token ids."
    )
    echo: bool | None = None
    # Fill-in-the-middle: the text after the gap the completion fills, the prompt being the text before it
    suffix: Annotated[Text, Field(max_length=1_000_000)] | None = None
    best_of: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | tuple[int, ...] | None]:
        """Each prompt, as text or as a tuple of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):  # one prompt of token ids
            return [tuple(self.prompt)]
        return [p if isinstance(p, str) else tuple(p) for p in self.prompt]

    def to_spec(self, *, job_id: str, tenant: str, correlation_id: str | None, max_tokens: int) -> TaskSpec:
        self.refuse_unsupported(chat=False)
        scored = self.echo and self.logprobs is not None
        if scored and self.suffix is not None:
            raise InvalidParams(
                "echo with logprobs scores a prompt, which has no suffix: leave out suffix or echo",
                param="suffix",
            )
        first = self.prompts()[0]
        if isinstance(first, tuple):
            if self.suffix is not None:
                raise InvalidParams("a suffix goes with a prompt of text, not of token ids", param="suffix")
            if self.echo and not scored:
                raise InvalidParams(
                    "echo of a prompt of token ids needs logprobs (the engine then gives the prompt's text "
                    "with its scores); send the prompt as text, or ask for logprobs",
                    param="echo",
                )
        return self._spec(
            job_id=job_id, tenant=tenant, correlation_id=correlation_id, max_tokens=max_tokens,
            suffix=self.suffix, logprobs=self.logprobs, prompt_logprobs=self.logprobs if scored else None,
            **_prompt_fields(first),
        )  # fmt: skip


def _prompt_fields(prompt: str | tuple[int, ...] | None) -> dict[str, Any]:
    """A job's prompt fields for one prompt: its text (`prompt`), or its token ids (`prompt_ids`)."""
    if isinstance(prompt, tuple):
        return {"prompt": None, "prompt_ids": prompt}
    return {"prompt": prompt, "prompt_ids": None}


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _plain(response_format: Any) -> bool:
    """`{"type": "text"}` asks for nothing beyond what every engine does."""
    return isinstance(response_format, dict) and response_format == {"type": "text"}
