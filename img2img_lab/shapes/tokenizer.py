"""The closed-vocabulary CLIP BPE tokenizer of the shapes world: every word of the world is one token.

CLIP's tokenizer is byte-pair encoding over the characters of each word (the last one marked ``</w>``),
applying the merges in ``merges.txt`` in rank order. Writing one merge chain per word naively breaks other
words (a merge ``r e`` made for "red" changes how "green" splits). :func:`build_merges` therefore
*simulates* BPE: for each word it applies the merges so far and appends only the merges still missing to
make that word a single token; appended merges rank last, so words already handled are unaffected. Any
other text still tokenizes (into single characters), so the tokenizer never fails.

Saved as vocab.json + merges.txt + tokenizer_config.json, it loads with ``CLIPTokenizer.from_pretrained``
(transformers 5 silently builds a 3-token vocabulary from ``CLIPTokenizer(vocab_file=..., merges_file=...)``).

>>> tokenizer = build_tokenizer()
>>> tokenizer.tokenize("a red star on a blue background")
['a</w>', 'red</w>', 'star</w>', 'on</w>', 'a</w>', 'blue</w>', 'background</w>']
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from img2img_lab._utils.bpe import write_clip_bpe
from img2img_lab.shapes.world import COLOURS, SHAPES

#: Every word the world's captions use (plus a few neutral words users may type).
WORDS = ("a", "an", "on", "background", *COLOURS, *SHAPES, "the", "with", "and", "of", "in", "picture", "photo")

#: Captions are short: "<start> a red star on a blue background <end>" is 9 tokens.
MODEL_MAX_LENGTH = 16


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the lowest-ranked adjacent pair."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, float("inf")), index) for index, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, index = min(pairs)
        if rank == float("inf"):
            break
        first, second = symbols[index], symbols[index + 1]
        merged, position = [], 0
        while position < len(symbols):  # merge every occurrence of the pair, left to right (as CLIP does)
            if position < len(symbols) - 1 and symbols[position] == first and symbols[position + 1] == second:
                merged.append(first + second)
                position += 2
            else:
                merged.append(symbols[position])
                position += 1
        symbols = merged
    return symbols


def _word_symbols(word: str) -> list[str]:
    return list(word[:-1]) + [word[-1] + "</w>"]


def build_merges(words=WORDS) -> list[tuple[str, str]]:
    """Merges that make each of ``words`` one token, found by simulating BPE (see the module docstring).

    >>> merges = build_merges(["red", "green"])
    >>> _apply_merges(_word_symbols("green"), {pair: rank for rank, pair in enumerate(merges)})
    ['green</w>']
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _apply_merges(_word_symbols(word), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = _apply_merges(_word_symbols(word), ranks)
    for word in words:  # appended merges rank last, so earlier words must still be whole
        assert _apply_merges(_word_symbols(word), ranks) == [word + "</w>"], word
    return merges


def write_tokenizer(folder: str | Path, words=WORDS, *, model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write the world's tokenizer files to ``folder``; load them with ``CLIPTokenizer.from_pretrained(folder)``."""
    return write_clip_bpe(folder, build_merges(words), model_max_length=model_max_length)


def build_tokenizer(words=WORDS):
    """A ``CLIPTokenizer`` for the world, built offline (written to a temporary folder and loaded back).

    >>> len(build_tokenizer()("a red star on a blue background").input_ids)
    9
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tokenizer(folder, words))
