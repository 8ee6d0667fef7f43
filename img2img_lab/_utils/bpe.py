"""Byte-level BPE tokenizer files written offline: CLIP's and Qwen2's formats (vocab.json, merges.txt and
tokenizer_config.json), for the shapes world's tokenizer and the tiny random pipelines; nothing is downloaded.

The vocabulary holds the 256 byte symbols (CLIP: each also with ``</w>``), every merge result and the format's
special tokens, so any text tokenizes. Load the folder with ``from_pretrained`` (transformers 5 silently builds a
3-token vocabulary from ``vocab_file=`` arguments).

>>> len(bytes_to_unicode()), bytes_to_unicode()[ord("a")]
(256, 'a')
"""

from __future__ import annotations

import json
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's and GPT-2's reversible byte -> printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def write_clip_bpe(folder: str | Path, merges, *, model_max_length: int) -> Path:
    """Write a CLIP BPE tokenizer with the given merges; load it with ``CLIPTokenizer.from_pretrained(folder)``.

    >>> import tempfile
    >>> from transformers import CLIPTokenizer
    >>> len(CLIPTokenizer.from_pretrained(write_clip_bpe(tempfile.mkdtemp(), [], model_max_length=77))("a red").input_ids)
    6
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [symbol + "</w>" for symbol in symbols]:
        vocab[symbol] = len(vocab)
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2))
    return folder


#: Qwen2's special tokens (Qwen2.5-VL's and Qwen3's chat and vision markers).
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                        "<|image_pad|>", "<|video_pad|>")
#: A chat template of Qwen's shape (``<|im_start|>role\\ncontent<|im_end|>``), for ``apply_chat_template``.
QWEN2_CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_qwen2_bpe(folder: str | Path, *, model_max_length: int = 4096) -> Path:
    """Write a merge-free Qwen2 byte-level tokenizer with Qwen's special tokens and a chat template; load it with
    ``Qwen2Tokenizer.from_pretrained(folder)``.

    >>> import tempfile
    >>> from transformers import Qwen2Tokenizer
    >>> tokenizer = Qwen2Tokenizer.from_pretrained(write_qwen2_bpe(tempfile.mkdtemp()))
    >>> len(tokenizer("<|im_start|>a cat").input_ids)
    6
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    for token in QWEN2_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {str(vocab[token]): {"content": token, "special": True, "lstrip": False, "rstrip": False,
                                   "normalized": False, "single_word": False} for token in QWEN2_SPECIAL_TOKENS}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": model_max_length, "unk_token": None,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace",
        "chat_template": QWEN2_CHAT_TEMPLATE, "added_tokens_decoder": special}, indent=1))
    return folder
