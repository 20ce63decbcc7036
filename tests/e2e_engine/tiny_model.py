"""Write a tiny random-weight llama model as GGUF, with llama.cpp's own writer (the `gguf` package).

Nothing can be downloaded in CI, but llama.cpp loads this file and runs it on a CPU at thousands of tokens
per second (engine-wire-formats.md §9): architecture ``llama``, all tensors F32, a SentencePiece-style
tokenizer of the control tokens, the 256 byte tokens (so every string is encodable) and ``▁``.
Seeded, so the file, and greedy output at temperature 0, are reproducible.

One choice beyond §9: the rows of ``output.weight`` for the control tokens and for the bytes 0x80-0xFF
are zero. Their logits are then exactly 0 while those of the 129 ASCII tokens are random, so greedy
decoding picks an ASCII token (one is positive, but for odds of 2**-129) and
- never EOS: a request ends at ``max_tokens``, so tests can count on the length of a generation;
- never a partial UTF-8 sequence: llama-cpp-python holds back tokens while it waits for the rest of a
  character, and random bytes would make it hold the whole generation and stream it only at the end.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CONTROL_TOKENS = ("<unk>", "<s>", "</s>")
# Fill-in-the-middle tokens (Qwen2.5-Coder's names), after ▁ in a model written with `fim=True`
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
_FIM_KEYS = (gguf.Keys.Tokenizer.FIM_PRE_ID, gguf.Keys.Tokenizer.FIM_SUF_ID, gguf.Keys.Tokenizer.FIM_MID_ID)


def tokenizer(*, fim: bool = False) -> tuple[list[str], list[float], list[int]]:
    """Token list, scores and types: <unk>, <s>, </s>, <0x00>…<0xFF>, ▁ (and with `fim` the three FIM
    control tokens)."""
    tokens = [*CONTROL_TOKENS, *(f"<0x{b:02X}>" for b in range(256)), "▁"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL]
    if fim:
        tokens += FIM_TOKENS
        types += [gguf.TokenType.CONTROL] * len(FIM_TOKENS)
    scores = [0.0] * len(tokens)
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 1234,
    n_ctx: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ff: int = 128,
    n_head: int = 4,
    pooling: gguf.PoolingType | None = None,
    fim: bool = False,
) -> Path:
    """`pooling`: the model's own pooling (`llama.pooling_type`), which an engine asked for embeddings
    reads when it is not told one (llama-cpp-python has no setting for it). `fim`: with fill-in-the-
    middle tokens, named as such in the metadata (what llama-server's `/infill` needs); never sampled."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = tokenizer(fim=fim)
    n_vocab = len(tokens)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if fim:
        for key, token_id in zip(_FIM_KEYS, range(n_vocab - len(FIM_TOKENS), n_vocab), strict=True):
            writer.add_uint32(key, token_id)

    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", ones())
    output = weights(n_vocab, n_embd)
    first_byte = len(CONTROL_TOKENS)
    output[:first_byte] = 0.0  # see the module docstring
    output[first_byte + 0x80 : first_byte + 0x100] = 0.0
    output[first_byte + 0x100 + 1 :] = 0.0  # the FIM tokens, if any (after ▁)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama.gguf")))
