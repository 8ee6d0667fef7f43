"""When the model is the wrong tool for a study, said once, in one line, where the user looks: the CLI (``warning:
...`` on stderr, never a Python warning's traceback-like text), the explorer's status line and the manifest's notes.

* a prompt with words the model's tokenizer does not know (it spells them out letter by letter or maps them to its
  unknown token: the embedded shapes-world model knows 21 words) or that it truncates (the embedded model reads 16
  tokens);
* a source downscaled for the model (an 800-px photo becomes 64 px for the embedded model);
* a source the model cannot represent: its VAE round trip (what strength 0 stores; outputs seldom get closer)
  reaches SSIM below :data:`FLOOR_SSIM`, so every measurement is dominated by what the model cannot draw.

>>> for advisory in prompt_advisories(pipe, "a red star on a velvet cushion"):
...     print(advisory)
the prompt 'a red star on a velvet cushion' has words the model's tokenizer does not know: velvet, cushion (it reads them letter by letter); the words it knows: an on background red green blue yellow white black circle square triangle star the with and of in picture photo
the prompt 'a red star on a velvet cushion' is 19 tokens; the model reads the first 16 (the rest is cut off). Fix: shorten it.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

#: A VAE round trip below this SSIM means the model cannot represent the source.
FLOOR_SSIM = 0.5


class ToolWarning(UserWarning):
    """The model is the wrong tool for this input (one line; the CLI prints ``warning: <message>`` once)."""


def _tokenizer(pipe):
    return getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of ``text`` a tokenizer does not know: it maps them to its unknown token, or spells a word out mostly
    one character per token (a closed vocabulary's fallback; a real model's rare word splits into a few syllables).

    >>> unknown_words(pipe.tokenizer, "a red star on a velvet cushion")  # the embedded model's closed vocabulary
    ['velvet', 'cushion']
    """
    unknown = []
    for word in dict.fromkeys(re.findall(r"[\w']+", text.lower())):
        pieces = tokenizer.tokenize(word)
        letters = sum(len(piece.removesuffix("</w>")) == 1 for piece in pieces)
        spelled = len(word) >= 2 and len(pieces) > 1 and letters >= len(pieces) / 2
        if spelled or (tokenizer.unk_token is not None and tokenizer.unk_token in pieces):
            unknown.append(word)
    return unknown


def prompt_advisories(pipe, prompt: str) -> list[str]:
    """What the model's tokenizer does not read of ``prompt`` (unknown words, truncation), in words."""
    tokenizer = _tokenizer(pipe)
    if tokenizer is None or not prompt:
        return []
    advisories = []
    unknown = unknown_words(tokenizer, prompt)
    if unknown:
        vocabulary = tokenizer.get_vocab()
        words = [token[:-4] for token in sorted(vocabulary, key=vocabulary.get)
                 if token.endswith("</w>") and token[:-4].isalpha() and len(token) > 5]
        advisories.append(
            f"the prompt {prompt!r} has words the model's tokenizer does not know: {', '.join(unknown)} (it reads them "
            f"letter by letter)" + (f"; the words it knows: {' '.join(words)}" if words and len(vocabulary) < 1000
                                    else ""))
    limit = getattr(tokenizer, "model_max_length", None)
    count = len(tokenizer(prompt)["input_ids"])
    if limit and count > limit:
        advisories.append(f"the prompt {prompt!r} is {count} tokens; the model reads the first {limit} (the rest is "
                          f"cut off). Fix: shorten it.")
    return advisories


def source_advisories(name: str, fit: dict | None, size: tuple[int, int]) -> list[str]:
    """A source downscaled for the model, in words (``fit``: how it was sized; ``size``: what the model got).

    >>> source_advisories("photo.jpg", {"original": [800, 800]}, (64, 64))
    ['photo.jpg: downscaled from 800x800 to 64x64 for the model (its native size); detail under ~12 px is lost']
    """
    if not fit or max(fit["original"]) <= max(size):
        return []
    width, height = fit["original"]
    lost = round(max(width, height) / max(size))
    return [f"{name}: downscaled from {width}x{height} to {size[0]}x{size[1]} for the model (its native size); detail "
            f"under ~{lost} px is lost"]


def floor_advisory(name: str, floor_ssim: float, model: str) -> list[str]:
    """A source whose VAE round trip stays below :data:`FLOOR_SSIM`, in words.

    >>> print(*floor_advisory("photo.jpg", 0.31, "embedded:shapes-world"))
    photo.jpg: the model cannot represent this image: its VAE round trip reaches SSIM 0.31 (outputs seldom score higher). Fix: use a real model: --model stable-diffusion-v1-5/stable-diffusion-v1-5 (embedded:shapes-world draws only its shapes world)
    """
    if not floor_ssim < FLOOR_SSIM:
        return []
    fix = (f"use a real model: --model stable-diffusion-v1-5/stable-diffusion-v1-5 ({model} draws only its shapes "
           f"world)" if model.startswith("embedded") else "use a model trained on such images (--model ...)")
    return [f"{name}: the model cannot represent this image: its VAE round trip reaches SSIM {floor_ssim:.2f} (outputs "
            f"seldom score higher). Fix: {fix}"]


def sweep_advisories(plan, pipe, sources_manifest: list[dict], sources) -> list[str]:
    """The prompt and source advisories of a sweep (its prompts and negative prompts, its prepared sources)."""
    from pathlib import Path

    messages = []
    for text in dict.fromkeys([*plan.prompts, *plan.negative_prompts]):
        messages += prompt_advisories(pipe, text)
    for entry, source in zip(sources_manifest, sources):
        messages += source_advisories(Path(str(entry["path"])).name, entry.get("fit"), source.size)
    return messages


def floor_advisories(store, sources_manifest: list[dict], model: str) -> list[str]:
    """The sources whose stored VAE round trip (first seed) stays below :data:`FLOOR_SSIM` (its recorded SSIM, where
    the sweep measured it)."""
    import math
    from pathlib import Path

    from img2img_lab.metrics.fidelity import ssim

    floor = store.read_floor()
    messages = []
    for entry in sources_manifest:
        rows = floor[floor["source_hash"] == entry["hash"]].sort_values("seed") if len(floor) else floor
        if len(rows):
            recorded = float(rows.iloc[0]["ssim"]) if "ssim" in rows.columns else math.nan
            value = recorded if math.isfinite(recorded) else ssim(store.load_source(entry["hash"]),
                                                                   store.load_output(rows.iloc[0]))
            messages += floor_advisory(Path(str(entry["path"])).name, value, model)
    return messages


def advise(messages) -> list[str]:
    """Emit each message as a :class:`ToolWarning` (the CLI prints it once, in one line); return them for the
    manifest's notes."""
    messages = list(messages)
    for message in messages:
        warnings.warn(message, ToolWarning, stacklevel=2)
    return messages


@contextmanager
def one_line_warnings(stream):
    """While it lasts, the library's own warnings (:class:`ToolWarning`, small sources, doubtful masks) print as
    ``warning: <message>`` on ``stream``, once per distinct message, instead of Python's file-and-line format (the
    CLI runs every command inside it)."""
    seen: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not (category.__module__ or "").startswith("img2img_lab"):
            return original(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=stream)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
