"""Prompt adherence: a :class:`PromptScorer` is any callable ``(image, prompt) -> float``; :class:`ClipScore` is the
CLIP implementation (Hessel et al. 2021), registered as ``clip_score`` by :mod:`img2img_lab.metrics.registry`.

>>> def constant(image, prompt: str) -> float:  # any such callable is a PromptScorer
...     return 0.5
>>> from img2img_lab.metrics.registry import register_prompt_scorer, unregister_metric
>>> register_prompt_scorer("constant", lambda: constant); unregister_metric("constant")
"""

from __future__ import annotations

import os
from typing import Protocol

from img2img_lab.errors import MetricUnavailable
from img2img_lab.images.arrays import metric_array


class PromptScorer(Protocol):
    """A prompt-adherence measure: ``scorer(image, prompt) -> float`` (higher = follows the prompt better)."""

    def __call__(self, image, prompt: str) -> float: ...


class ClipScore:
    """CLIP score: ``100 * max(cos(image embedding, text embedding), 0)`` (Hessel et al. 2021), in [0, 100].

    ``model`` is a local folder or a hub id of a ``CLIPModel`` (default ``$IMG2IMG_LAB_CLIP_MODEL`` or
    ``openai/clip-vit-base-patch32``); online, missing weights download into the Hugging Face cache on first use
    (:func:`img2img_lab.metrics.weight_files.fetch_clip`); offline they must be there, else :class:`MetricUnavailable` says how to
    seed them.

    >>> scorer = ClipScore("openai/clip-vit-base-patch32")  # downloads CLIP  # doctest: +SKIP
    >>> scorer(image, "a watercolor teapot")  # needs the weights above  # doctest: +SKIP
    31.2
    """

    DEFAULT = "openai/clip-vit-base-patch32"

    def __init__(self, model: str | None = None, *, device: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        from img2img_lab._utils.quiet import apply_quiet
        from img2img_lab.metrics.weight_files import fetch_clip

        apply_quiet()
        name = model or os.environ.get("IMG2IMG_LAB_CLIP_MODEL") or self.DEFAULT
        folder = fetch_clip(name)  # cached, or downloaded now (online), or MetricUnavailable with the fix
        try:
            self.model = CLIPModel.from_pretrained(folder).eval().to(device or "cpu")
            self.processor = CLIPProcessor.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise MetricUnavailable(
                f"clip_score: CLIP weights '{name}' are not available here ({str(error).splitlines()[0]}). "
                f"Fix: download them once while online (`hf download {name}`), or set IMG2IMG_LAB_CLIP_MODEL "
                f"to a local CLIPModel folder."
            ) from None
        self.device = device or "cpu"

    def __call__(self, image, prompt: str) -> float:
        import torch

        inputs = self.processor(text=[prompt], images=[metric_array(image)], return_tensors="pt", padding=True,
                                truncation=True)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.no_grad():
            image_features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text_features = self.model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs.get("attention_mask"))
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features).item()
        return 100.0 * max(cosine, 0.0)
