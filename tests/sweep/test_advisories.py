"""What the sweep says about a prompt the model's tokenizer cannot read."""

from __future__ import annotations

from img2img_lab.models.families.tiny_parts import clip_tokenizer
from img2img_lab.sweep.advisories import prompt_advisories


class _Pipe:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def test_a_vocabulary_without_whole_words_lists_none():
    """Random-weight pipelines carry a letter-level vocabulary: the advisory must not end with an empty list."""
    (advisory,) = prompt_advisories(_Pipe(clip_tokenizer()), "a red cat")
    assert advisory.endswith("does not know: red, cat (it reads them letter by letter)")
    assert "words it knows" not in advisory


def test_a_prompt_past_the_tokenizer_limit_is_said_with_its_length():
    advisories = prompt_advisories(_Pipe(clip_tokenizer(max_length=4)), "a b c d e f")
    assert any("tokens; the model reads the first 4" in line for line in advisories)
