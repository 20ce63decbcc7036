"""Build guidellm's tokenizer ("processor") offline: ``python bench/guidellm_processor.py DIR``.

Runs inside guidellm's venv (``bench/guidellm_env.py``), which has ``faker``, ``tokenizers`` and
``transformers``; the project's venv has none of them. A byte-level BPE tokenizer is trained on seeded
Faker text, the generator guidellm draws its synthetic prompts from, and saved with
``PreTrainedTokenizerFast.save_pretrained``. Byte-level, so any text encodes without unknown tokens;
2,000 entries, so a token of that text is about 4 characters, as with real models' tokenizers (a
64-token prompt is about 256 characters). It trains in well under a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

from faker import Faker  # type: ignore[import-not-found]
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-not-found]
from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found]

VOCAB_SIZE = 2000
SEED = 7
EOS = "<|endoftext|>"


def corpus(paragraphs: int = 300) -> list[str]:
    faker = Faker()
    faker.seed_instance(SEED)
    return [faker.text(max_nb_chars=1000) for _ in range(paragraphs)]


def build(out: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS)
    fast.save_pretrained(str(out))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
