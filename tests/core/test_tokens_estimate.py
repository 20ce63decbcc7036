"""The prompt-token estimate is a quarter of the prompt's UTF-8 bytes (at least 1), for a prompt or
for chat messages, whatever the characters: ASCII text takes a shortcut that must agree with it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestratord.core.tasks import Message, TaskSpec

texts = st.one_of(st.text(max_size=200), st.text(st.characters(max_codepoint=127), max_size=200))


@given(prompt=texts)
def test_a_prompt_is_estimated_from_its_utf8_bytes(prompt: str) -> None:
    spec = TaskSpec("j", "t", "m", 16, prompt=prompt)
    assert spec.tokens_in_estimate == max(1, len(prompt.encode()) // 4)


@given(contents=st.lists(texts, min_size=1, max_size=5))
def test_messages_are_estimated_from_their_joined_utf8_bytes(contents: list[str]) -> None:
    spec = TaskSpec("j", "t", "m", 16, messages=tuple(Message("user", c) for c in contents))
    assert spec.tokens_in_estimate == max(1, len("\n".join(contents).encode()) // 4)


def test_a_non_ascii_prompt_counts_bytes_not_characters() -> None:
    assert TaskSpec("j", "t", "m", 16, prompt="é" * 40).tokens_in_estimate == 20  # 80 bytes
    assert TaskSpec("j", "t", "m", 16, prompt="e" * 40).tokens_in_estimate == 10
