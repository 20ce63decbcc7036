"""Write a tiny random-weight Llama in Hugging Face format, which vLLM loads (engine-wire-formats.md §10.2).

Nothing can be downloaded in CI, so the model is made here: ``config.json`` (``LlamaForCausalLM``, float32),
``model.safetensors``, a byte-level BPE ``tokenizer.json`` (the 256 bytes, no merges, plus a BOS and an EOS
token), ``tokenizer_config.json`` with a chat template, and ``generation_config.json``. Only numpy is
needed: the safetensors file and the tokenizer are written by hand (both formats are simple, and the test
environment has neither ``safetensors`` nor ``tokenizers``).

The model only ever emits printable ASCII (0x20-0x7E), at any temperature: a generation never ends on
EOS (it runs to ``max_tokens``), never holds back a partial UTF-8 character and never emits a control
character. (Zero rows of ``lm_head`` for the other tokens, as in tiny_model.py, the GGUF twin, only work
greedily: sampled at temperature 1 the 163 zero logits take about half the draws, and EOS ends a
generation after a few hundred tokens.) A Llama ``lm_head`` has no bias, so one is built: dimension 0
of the residual stream is a constant (``CONSTANT`` in every embedding) that no layer reads or writes, so
after the final RMS norm it is positive, and ``lm_head``'s column 0 (``-BIAS`` for the other tokens, 0
for printable ASCII) puts their logits far below: by about 1,100 in the default model, 70 in ``SLOW``
and 50 with 16 of its layers (printable logits spread over ±0.2, ±9 and ±8).

Seeded, so the files, and greedy output at temperature 0, are reproducible. Head size is
``hidden // heads``, and must be one vLLM's CPU attention supports (32, 64, 80, …): 128 / 2 = 64 by
default, 512 / 8 = 64 for ``SLOW``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
BOS_ID, EOS_ID = 256, 257  # after the 256 byte tokens, whose ids are their byte values
VOCAB_SIZE = 258
CONSTANT, BIAS = 30.0, 100.0  # dimension 0 of the residual stream; lm_head's weight on it (see above)

# Wide and deep enough that vLLM on one CPU core generates slowly (a few hundred tokens take seconds),
# for tests that must cancel or kill mid-generation. About 135 MB on disk.
SLOW: dict[str, int] = {"hidden": 512, "heads": 8, "layers": 8, "intermediate": 2048}

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (what ByteLevel maps bytes to)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tokenizer_json() -> dict[str, Any]:
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, text in ((BOS_ID, BOS), (EOS_ID, EOS))
    ]  # fmt: skip
    bos = {"SpecialToken": {"id": BOS, "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {  # a BOS in front, as Llama 3's tokenizer does (chat prompts carry their own)
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}},
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {**vocab, BOS: BOS_ID, EOS: EOS_ID},
            "merges": [],
        },
    }


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format: an 8-byte little-endian header length, a JSON header giving each tensor's
    dtype, shape and byte range (from the end of the header), then the raw little-endian bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, array in tensors.items():
        assert array.dtype == np.float32, name
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for array in tensors.values():
            out.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def write_tiny_hf_llama(
    directory: Path,
    *,
    hidden: int = 128,
    heads: int = 2,
    layers: int = 2,
    intermediate: int = 256,
    max_position: int = 4096,
    seed: int = 0,
) -> Path:
    """Write the model into ``directory`` (created if needed) and return it: vLLM's ``--model``.
    ``write_tiny_hf_llama(d, **SLOW)`` writes the slow variant."""
    assert hidden % heads == 0, "the head size is hidden // heads"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(hidden, dtype=np.float32)

    def reading(*shape: int) -> np.ndarray:  # a layer's input projection: blind to dimension 0
        w = weights(*shape)
        w[:, 0] = 0.0
        return w

    def writing(*shape: int) -> np.ndarray:  # a layer's output projection: leaves dimension 0 alone
        w = weights(*shape)
        w[0, :] = 0.0
        return w

    embed = weights(VOCAB_SIZE, hidden)
    embed[:, 0] = CONSTANT  # the constant dimension (see the module docstring)
    tensors = {"model.embed_tokens.weight": embed}
    for i in range(layers):
        layer = f"model.layers.{i}"
        tensors[f"{layer}.input_layernorm.weight"] = ones()
        for name in ("q_proj", "k_proj", "v_proj"):
            tensors[f"{layer}.self_attn.{name}.weight"] = reading(hidden, hidden)
        tensors[f"{layer}.self_attn.o_proj.weight"] = writing(hidden, hidden)
        tensors[f"{layer}.post_attention_layernorm.weight"] = ones()
        tensors[f"{layer}.mlp.gate_proj.weight"] = reading(intermediate, hidden)
        tensors[f"{layer}.mlp.up_proj.weight"] = reading(intermediate, hidden)
        tensors[f"{layer}.mlp.down_proj.weight"] = writing(hidden, intermediate)
    tensors["model.norm.weight"] = ones()
    lm_head = weights(VOCAB_SIZE, hidden)
    printable = np.zeros(VOCAB_SIZE, dtype=bool)
    printable[0x20:0x7F] = True
    lm_head[:, 0] = np.where(printable, 0.0, -BIAS)  # the bias
    lm_head[~printable, 1:] = 0.0
    tensors["lm_head.weight"] = lm_head
    write_safetensors(directory / "model.safetensors", tensors)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    files: dict[str, Any] = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID},
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "model_max_length": max_position,
            "chat_template": CHAT_TEMPLATE,
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    return directory


if __name__ == "__main__":
    import sys

    slow = "--slow" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--slow"]
    print(write_tiny_hf_llama(Path(args[0] if args else "tiny-hf-llama"), **(SLOW if slow else {})))
