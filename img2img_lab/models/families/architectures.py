"""Real-size architectures without weights: the published configs of SD 1.5, SDXL, SD 3.5 medium and FLUX.1-dev
(``data/architectures/<name>.json``, each naming its source repository and what, if anything, was reduced to fit 24 GB
in float32), built offline into random-weight pipelines of the real classes. For benchmarks, memory planning and
tests; never a model: the weights are random, and the denoiser's output layer is scaled down (``output_scale``) so
random latents stay finite through a sampling loop.

Each family module names its architectures (``real_size``); :data:`img2img_lab.models.registry.REAL_SIZE` lists
them all and :func:`img2img_lab.testing.make_real_size_pipeline` builds one.

>>> record = architecture("sd15")
>>> record["pipeline"], record["components"]["unet"]["config"]["block_out_channels"]
('StableDiffusionImg2ImgPipeline', [320, 640, 1280, 1280])
>>> parameter_count(record) // 1_000_000   # UNet, VAE and text encoder, counted from the configs on the meta device
1066
"""

from __future__ import annotations

import json

#: The denoiser's output layer per class, scaled by ``output_scale`` (random weights otherwise blow latents up).
OUTPUT_LAYERS = {"UNet2DConditionModel": "conv_out", "SD3Transformer2DModel": "proj_out",
                 "FluxTransformer2DModel": "proj_out"}


def architecture(name: str) -> dict:
    """The record of a bundled architecture (``data/architectures/<name>.json``)."""
    from img2img_lab.resources import data_path

    return json.loads(data_path("architectures", f"{name}.json").read_text())


def _tokenizer(spec: dict):
    from img2img_lab.models.families.tiny_parts import clip_tokenizer, t5_tokenizer

    return (clip_tokenizer if spec["tokenizer"] == "clip" else t5_tokenizer)(spec["model_max_length"])


def _component(spec: dict, tokenizer=None):
    """One model component of a record, random weights (a text encoder's special token ids from its tokenizer)."""
    if spec["library"] == "diffusers":
        import diffusers

        return getattr(diffusers, spec["class"])(**spec["config"])
    import transformers

    ids = {} if tokenizer is None else {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                        "pad_token_id": tokenizer.pad_token_id}
    config = getattr(transformers, spec["config_class"])(**spec["config"], **{k: v for k, v in ids.items()
                                                                              if v is not None})
    return getattr(transformers, spec["class"])(config)


def parameter_count(record: dict) -> int:
    """The parameters of a record's model components, built on the meta device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        return sum(sum(parameter.numel() for parameter in _component(spec).parameters())
                   for spec in record["components"].values() if "library" in spec)


def build_architecture(name: str, *, seed: int = 0, output_scale: float = 0.05):
    """A random-weight pipeline of the architecture ``name`` (CPU, float32, progress bar off): its components from the
    record's configs, its scheduler from the bundled scheduler config the record names, byte-level CLIP and word-level
    T5 tokenizers written offline. Cast it with ``.to(dtype)`` for half precision."""
    import diffusers
    import torch

    from img2img_lab.models.families.tiny_parts import for_inference
    from img2img_lab.resources import data_path

    record = architecture(name)
    torch.manual_seed(seed)
    specs = record["components"]
    tokenizers = {key: _tokenizer(spec) for key, spec in specs.items() if "tokenizer" in spec}
    components = dict(tokenizers)
    for key, spec in specs.items():
        if "library" in spec:
            tokenizer = tokenizers.get(key.replace("text_encoder", "tokenizer"))
            components[key] = _component(spec, tokenizer)
            if spec["class"] in OUTPUT_LAYERS:
                with torch.no_grad():
                    getattr(components[key], OUTPUT_LAYERS[spec["class"]]).weight.mul_(output_scale)
    scheduler = json.loads(data_path("schedulers", f"{record['scheduler']}.json").read_text())["scheduler"]
    components["scheduler"] = getattr(diffusers, scheduler["_class_name"]).from_config(scheduler)
    return for_inference(getattr(diffusers, record["pipeline"])(**components, **record["arguments"]))
