"""Engine name → adapter class, by import string, loaded lazily: unused engines cost nothing."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, cast

from worker_adapters.base import AdapterConfig, WorkerAdapter

ADAPTERS: dict[str, str] = {
    "mock": "worker_adapters.mock:MockAdapter",
    "llamacpp": "worker_adapters.llamacpp_http:LlamaCppAdapter",
    "openai": "worker_adapters.openai_http:OpenAIAdapter",
    "vllm": "worker_adapters.vllm_http:VllmAdapter",
    "tgi": "worker_adapters.tgi_http:TgiAdapter",
    "ollama": "worker_adapters.ollama_http:OllamaAdapter",
}

# Optional request parameters an engine cannot honour. A job that asks for one is only placed on
# pools whose engine can, and refused (naming the parameter) when no pool serving its model can.
# (`tool_messages`: chat turns that carry tool calls or tool results, which only OpenAI-dialect chat reads.)
_STRUCTURED = frozenset({"tools", "tool_choice", "response_format", "tool_messages"})
_NATIVE = _STRUCTURED | {"logprobs", "logit_bias", "prompt_logprobs", "suffix", "prompt_ids"}
_EXTENDED_SAMPLING = frozenset({"top_k", "min_p", "repetition_penalty"})
# Not a field either: an embeddings job (`TaskSpec.inputs`), which TGI's generate routes cannot serve
EMBEDDINGS = "embeddings"
UNSUPPORTED: dict[str, frozenset[str]] = {
    # TGI's generate parameters have no presence penalty. OpenAI tools and response formats (which only
    # chat jobs carry) reach OpenAI-dialect chat (`openai`, `vllm`, and llama-server's, whose chat
    # template's tool-call markers its parser learns from the template; a response format there is a
    # grammar from the schema) and Ollama's chat (its `tools` and `format`; no `tool_choice` but auto or
    # none, `core.tasks`); TGI's native route and the mock take neither. Log
    # probabilities go to the OpenAI dialect's engines (llama-server's prompt jobs that ask for them take
    # its `/v1/completions`, not its native route) and to Ollama's native routes (0.12.11 and later);
    # `logit_bias` to the OpenAI dialect's only. The prompt's own log probabilities (completions' `echo`
    # with `logprobs`) come from vLLM and OpenAI-compatible servers (llama-cpp-python) only: llama-server
    # and Ollama echo no prompt.
    # `ignore_eos` is vLLM's and llama.cpp's (and the mock's); OpenAI-compatible servers may drop it
    # unread (llama-cpp-python does), TGI and Ollama have none. `reasoning_effort` is OpenAI's chat
    # field, which vLLM reads (gpt-oss) and the Ollama adapter turns into `think`; llama-server takes it
    # without saying what it does with it (its own `--reasoning-effort` feeds the chat template), and
    # TGI has none.
    # `chat_template_kwargs` is vLLM's and llama-server's chat extension; OpenAI's own API refuses a
    # field it does not know, so a generic OpenAI-compatible server is not sent it.
    # A `suffix` (fill-in-the-middle) goes to llama-server's `/infill`, to Ollama's generate route and
    # to OpenAI-compatible servers; vLLM refuses one ("suffix is not currently supported").
    # A prompt of token ids (`prompt_ids`) goes to the engines whose completions take one (vLLM,
    # llama-server, OpenAI's dialect); Ollama's and TGI's prompts are text.
    # vLLM's sampling extensions (`top_k`, `min_p`, `repetition_penalty`) go to vLLM, llama.cpp and
    # Ollama; OpenAI's own API refuses them (a generic server is not sent them, unless its pool says it
    # takes them: `SAMPLING_EXTENSIONS`), and TGI's chat route has none of them.
    "tgi": frozenset({"presence_penalty", "ignore_eos", EMBEDDINGS})
    | _NATIVE
    | _EXTENDED_SAMPLING
    | {"reasoning_effort", "chat_template_kwargs"},
    "llamacpp": frozenset({"reasoning_effort", "dimensions", "prompt_logprobs"}),
    "ollama": frozenset(
        {"tool_choice", "logit_bias", "ignore_eos", "chat_template_kwargs", "prompt_logprobs", "prompt_ids"}
    ),
    "mock": _NATIVE | _EXTENDED_SAMPLING | {"reasoning_effort", "chat_template_kwargs"},
    "openai": frozenset({"ignore_eos", "chat_template_kwargs"}) | _EXTENDED_SAMPLING,
    "vllm": frozenset({"suffix"}),
}


# The largest seed an engine takes as given. llama.cpp's seed is a 32-bit unsigned integer whose
# largest value means "random": a larger seed would be cut to 32 bits there and mean something else
# than on the other engines, so a job with one is refused where only such engines serve its model.
SEED_LIMITS: dict[str, int] = {"llamacpp": 2**32 - 2}


# An `openai` pool whose server takes vLLM's sampling extensions says so, naming its repetition
# penalty: `sampling_extensions: repetition_penalty` (or true: vLLM's names, SGLang's) or
# `repeat_penalty` (llama.cpp's: llama-cpp-python, LM Studio)
SAMPLING_EXTENSIONS = "sampling_extensions"
_PENALTY_NAMES = {"true": "repetition_penalty", "repetition_penalty": "repetition_penalty",
                  "repeat_penalty": "repeat_penalty"}  # fmt: skip


def penalty_name(options: Mapping[str, object]) -> str | None:
    """The repetition penalty's name an `openai` pool's server reads, when its `sampling_extensions`
    option says it takes vLLM's sampling extensions; None when it does not say so."""
    value = str(options.get(SAMPLING_EXTENSIONS, "false")).strip().lower()
    return _PENALTY_NAMES.get(value)


def check_sampling_extensions(options: Mapping[str, object]) -> None:
    """ValueError for a `sampling_extensions` option that is none of the values it takes."""
    value = str(options.get(SAMPLING_EXTENSIONS, "false")).strip().lower()
    if value not in (*_PENALTY_NAMES, "false"):
        raise ValueError(
            f"{SAMPLING_EXTENSIONS} is {value!r}; give repetition_penalty (or true) for a server that takes "
            "vLLM's names, repeat_penalty for llama.cpp's (llama-cpp-python, LM Studio), or false"
        )


# An `openai` pool whose server has vLLM's `/tokenize` and `/detokenize` says so: `tokenizer: vllm`
TOKENIZER = "tokenizer"


def tokenizer_routes(options: Mapping[str, object]) -> str | None:
    """The tokenizing routes an `openai` pool's options say its server has: "vllm", or None."""
    value = str(options.get(TOKENIZER, "none")).strip().lower()
    return None if value == "none" else value


def check_tokenizer(options: Mapping[str, object]) -> None:
    """ValueError for a `tokenizer` option that is none of the values it takes."""
    if tokenizer_routes(options) not in (None, "vllm"):
        raise ValueError(
            f"{TOKENIZER} is {options.get(TOKENIZER)!r}; give vllm for a server that has vLLM's /tokenize "
            "and /detokenize (vLLM, another orchestratord), or none"
        )


def honours(engine: str, parameter: str, options: Mapping[str, object] | None = None) -> bool:
    """Whether a pool of `engine` (with the pool's `options`) takes `parameter`."""
    if engine == "openai" and parameter in _EXTENDED_SAMPLING and options and penalty_name(options):
        return True
    return parameter not in UNSUPPORTED.get(engine, frozenset())


def seed_limit(engine: str, configured: int | None = None) -> int:
    """The largest seed a pool's engine takes as given: the pool's `max_seed` (for an engine whose kind
    does not tell, such as an OpenAI-compatible llama-cpp-python, also 32 bits), else its kind's."""
    return configured if configured is not None else SEED_LIMITS.get(engine, 2**63 - 1)


def load_adapter(config: AdapterConfig) -> WorkerAdapter:
    """Build the adapter for `config.engine`; ValueError names the known engines if it is unknown."""
    try:
        target = ADAPTERS[config.engine]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown engine {config.engine!r}; known engines: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    return cast(WorkerAdapter, cls(config))
