"""Tiny random-weight img2img pipelines of every diffusers family, built offline from configs alone.

Real SDXL / SD3 / Flux / LCM weights cannot be downloaded offline, yet img2img-lab must record what each
family's pipeline really runs. :func:`make_tiny_family` builds a small pipeline of the family's real
diffusers class (same scheduler config style as the released models), so tests exercise the family's own
``__call__``, timestep preparation and size rules in milliseconds.

=================  ======================================  ==========================================
family             diffusers class                         scheduler (as the released model's folder)
=================  ======================================  ==========================================
``sd1``            StableDiffusionImg2ImgPipeline          PNDM, SD 1.x betas, epsilon
``sd2-v``          StableDiffusionImg2ImgPipeline          DDIM, v-prediction (SD 2.x 768-v)
``sdxl``           StableDiffusionXLImg2ImgPipeline        Euler discrete (SDXL base)
``sd3``            StableDiffusion3Img2ImgPipeline         flow matching, shift 3 (SD3 medium)
``flux-dev``       FluxImg2ImgPipeline (guidance embeds)   flow matching, dynamic shifting (FLUX.1-dev)
``flux-schnell``   FluxImg2ImgPipeline (no guidance)       flow matching, constant shift 1 (schnell)
``lcm``            LatentConsistencyModelImg2ImgPipeline   LCM, 50 original steps
=================  ======================================  ==========================================

Text encoders are CLIP (byte-level BPE, :func:`img2img_lab.testing.tiny_sd.write_byte_level_tokenizer`) and T5 (a
unigram tokenizer built from a word list; no sentencepiece, no download).

>>> pipe = make_tiny_family("flux-dev")
>>> type(pipe).__name__, pipe.scheduler.config.use_dynamic_shifting
('FluxImg2ImgPipeline', True)
"""

from __future__ import annotations

import tempfile


#: Every family :func:`make_tiny_family` builds.
TINY_FAMILIES = ("sd1", "sd2-v", "sdxl", "sd3", "flux-dev", "flux-schnell", "lcm")

_T5_WORDS = ("a", "an", "the", "on", "of", "red", "green", "blue", "yellow", "white", "black", "cat", "dog",
             "circle", "square", "star", "photo", "painting", "background", "blurry", "bright")


def tiny_t5(hidden: int = 32):
    """``(T5EncoderModel, T5Tokenizer)``: a 2-layer random T5 encoder and a word-level unigram tokenizer.

    >>> encoder, tokenizer = tiny_t5()
    >>> tokenizer("a red cat").input_ids
    [3, 8, 14, 1]
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{word}", -float(index + 1)) for index, word in enumerate(_T5_WORDS)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(vocab_size=len(vocab), d_model=hidden, d_ff=hidden * 2, d_kv=8, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config), tokenizer


def _clip(hidden: int = 32, *, projection: bool = False, max_length: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from img2img_lab.testing.tiny_sd import write_byte_level_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_byte_level_tokenizer(folder, model_max_length=max_length))
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                            projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def tiny_vae(latent_channels: int, *, blocks=(8, 16), flow: bool = False):
    """A random 2-block ``AutoencoderKL`` (VAE factor 2); ``flow``: FLUX.1/SD3-style shift and scaling, no quant convs.

    >>> tiny_vae(16, flow=True).config.latent_channels
    16
    """
    from diffusers import AutoencoderKL

    extra = {"shift_factor": 0.0609, "scaling_factor": 1.5035, "use_quant_conv": False,
             "use_post_quant_conv": False} if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(blocks),
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), latent_channels=latent_channels,
                         layers_per_block=1, norm_num_groups=min(8, blocks[0]), sample_size=32, **extra)


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip(32)
    text_encoder_2, tokenizer_2 = _clip(32, projection=True)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLImg2ImgPipeline(vae=tiny_vae(4), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                            scheduler=scheduler, requires_aesthetics_score=False,
                                            force_zeros_for_empty_prompt=True)


def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline

    text_encoder, tokenizer = _clip(32, projection=True)
    text_encoder_2, tokenizer_2 = _clip(32, projection=True)
    text_encoder_3, tokenizer_3 = tiny_t5(32)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    return StableDiffusion3Img2ImgPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(4, flow=True),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def _flux(*, guidance: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxTransformer2DModel

    text_encoder, tokenizer = _clip(32)
    text_encoder_2, tokenizer_2 = tiny_t5(32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance)
    if guidance:  # FLUX.1-dev's scheduler/scheduler_config.json
        scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                    max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                               tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                               transformer=transformer)


def _lcm():
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LCMScheduler, UNet2DConditionModel

    text_encoder, tokenizer = _clip(32)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                time_cond_proj_dim=32, norm_num_groups=8, attention_head_dim=4)
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             original_inference_steps=50, set_alpha_to_one=True, timestep_spacing="leading")
    return LatentConsistencyModelImg2ImgPipeline(vae=tiny_vae(4), text_encoder=text_encoder, tokenizer=tokenizer,
                                                 unet=unet, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)


def make_tiny_family(family: str, *, seed: int = 0):
    """A random-weight pipeline of ``family`` (one of :data:`TINY_FAMILIES`), CPU, fp32, progress bar off.

    >>> type(make_tiny_family("sd3")).__name__
    'StableDiffusion3Img2ImgPipeline'
    """
    import torch

    from img2img_lab.testing.tiny_sd import make_tiny_pipeline

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; use one of {', '.join(TINY_FAMILIES)}")
    torch.manual_seed(seed)
    if family in ("sd1", "sd2-v"):
        pipe = make_tiny_pipeline(seed=seed)
        if family == "sd2-v":
            from diffusers import DDIMScheduler

            pipe.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                           prediction_type="v_prediction")
    else:
        builders = {"sdxl": _sdxl, "sd3": _sd3, "flux-dev": lambda: _flux(guidance=True),
                    "flux-schnell": lambda: _flux(guidance=False), "lcm": _lcm}
        pipe = builders[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_family(family: str, folder, *, seed: int = 0):
    """Build :func:`make_tiny_family` and ``save_pretrained`` it to ``folder``; return the folder.

    >>> import json
    >>> json.loads((save_tiny_family("lcm", "tiny-lcm") / "scheduler/scheduler_config.json").read_text())["_class_name"]
    'LCMScheduler'
    """
    from pathlib import Path

    folder = Path(folder)
    make_tiny_family(family, seed=seed).save_pretrained(folder)
    return folder
