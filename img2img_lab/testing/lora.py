"""Random LoRA adapter files for a pipeline, built offline with PEFT and saved with the pipeline class's own
``save_lora_weights`` (diffusers' format): for tests and benchmarks, never presented as a style.

>>> from img2img_lab.models.registry import tiny_pipeline
>>> pipe = tiny_pipeline("sd1")
>>> file = random_lora_file(pipe, "style.safetensors")
>>> from safetensors import safe_open
>>> with safe_open(str(file), framework="pt") as handle:
...     sorted({key.split(".")[0] for key in handle.keys()})
['text_encoder', 'unet']
"""

from __future__ import annotations

import copy
from pathlib import Path

#: The attention projections a random adapter adapts: denoisers' (UNet, FLUX.1 / SD3 transformers) and CLIP's.
DENOISER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def random_lora_file(pipe, path, *, rank: int = 4, seed: int = 0, text_encoders: bool = True,
                     scale: float = 1.0) -> Path:
    """Write a random LoRA for ``pipe``'s denoiser (and, with ``text_encoders``, its CLIP text encoders) to ``path``
    (a ``.safetensors`` file) and return the path. Both LoRA matrices are random (PEFT's default initialisation of
    B is zero, which would change nothing); ``scale`` multiplies B. ``pipe`` itself is not changed."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    path = Path(path)
    layers = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for component in type(pipe)._lora_loadable_modules:
            module = getattr(pipe, component, None)
            is_text = component.startswith("text_encoder")
            if module is None or (is_text and (not text_encoders or "CLIP" not in type(module).__name__)):
                continue
            copied = copy.deepcopy(module)
            targets = TEXT_ENCODER_TARGETS if is_text else DENOISER_TARGETS
            copied.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets),
                                          init_lora_weights=False))
            state = get_peft_model_state_dict(copied)
            layers[f"{component}_lora_layers"] = {key: value * scale if "lora_B" in key else value
                                                  for key, value in state.items()}
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **layers)
    return path
