"""Tiny random-weight pipelines for tests and benchmarks, built fully offline.

:func:`make_tiny_pipeline` builds a real :class:`diffusers.StableDiffusionImg2ImgPipeline` (UNet, VAE,
CLIP text encoder, CLIP tokenizer, PNDM scheduler) small enough to run a 20-step call in milliseconds.
:func:`write_byte_level_tokenizer` writes a CLIP BPE tokenizer whose vocabulary is the 256 byte
symbols (no merges): every text tokenizes, nothing is downloaded.

>>> from img2img_lab.models.loading import load_pipeline
>>> make_tiny_pipeline().save_pretrained("tiny")
>>> type(load_pipeline("tiny")).__name__
'StableDiffusionImg2ImgPipeline'
"""

from __future__ import annotations

import tempfile
from pathlib import Path



def write_byte_level_tokenizer(folder: str | Path, *, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json of a merge-free CLIP BPE tokenizer.

    Every text tokenizes (into byte symbols). Load it with ``CLIPTokenizer.from_pretrained(folder)`` (not with
    ``vocab_file=``, which transformers 5 silently reduces to a 3-token vocabulary).

    >>> from transformers import CLIPTokenizer
    >>> folder = write_byte_level_tokenizer(tempfile.mkdtemp())
    >>> len(CLIPTokenizer.from_pretrained(folder)("a red circle").input_ids)
    12
    """
    from img2img_lab.shapes.tokenizer import write_clip_bpe

    return write_clip_bpe(folder, merges=[], model_max_length=model_max_length)


def make_tiny_pipeline(
    *,
    seed: int = 0,
    sample_size: int = 32,
    unet_channels: tuple[int, ...] = (32, 64),
    vae_channels: tuple[int, ...] = (32, 64),
    text_hidden: int = 32,
    cross_attention_dim: int = 32,
    attention: bool = True,
    max_length: int = 16,
    layers_per_block: int = 1,
    text_layers: int = 2,
    text_heads: int | None = None,
    attention_head_dim: int | None = None,
):
    """Build a random-weight :class:`StableDiffusionImg2ImgPipeline` (CPU, fp32) from configs alone.

    ``sample_size`` is the image side in pixels; the VAE factor is ``2 ** (len(vae_channels) - 1)``.
    The scheduler is PNDM with Stable Diffusion 1.x's betas, as in SD 1.5's own model folder.
    Larger ``unet_channels`` / ``vae_channels`` / ``text_hidden`` give realistically shaped models
    (``benchmarks/sweep_speed.py --gpu-sd15`` builds an SD-1.5-sized one this way).

    >>> pipe = make_tiny_pipeline()
    >>> pipe.vae_scale_factor, type(pipe.scheduler).__name__
    (2, 'PNDMScheduler')
    """
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    if text_hidden != cross_attention_dim:
        raise ValueError("text_hidden must equal cross_attention_dim (the UNet reads the encoder's hidden states).")
    torch.manual_seed(seed)  # the components draw their random weights in this order: UNet, VAE, text encoder
    vae_factor = 2 ** (len(vae_channels) - 1)
    unet = _tiny_unet(sample_size // vae_factor, unet_channels, cross_attention_dim, attention=attention,
                      layers_per_block=layers_per_block, attention_head_dim=attention_head_dim)
    vae = _tiny_vae(sample_size, vae_channels, layers_per_block=layers_per_block)
    tokenizer, text_encoder = _tiny_text_encoder(text_hidden, cross_attention_dim, max_length=max_length,
                                                 layers=text_layers, heads=text_heads)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=sd_pndm_scheduler(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_unet(latent_size: int, channels, cross_attention_dim: int, *, attention: bool, layers_per_block: int,
               attention_head_dim: int | None):
    from diffusers import UNet2DConditionModel

    down_blocks = ["CrossAttnDownBlock2D" if attention else "DownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"]
    up_blocks = ["UpBlock2D"] + ["CrossAttnUpBlock2D" if attention else "UpBlock2D"] * (len(channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=tuple(channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down_blocks), up_block_types=tuple(up_blocks),
        mid_block_type="UNetMidBlock2DCrossAttn" if attention else None, cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim or (max(1, channels[0] // 8) if attention else 8),
        norm_num_groups=min(32, channels[0]),
    )


def _tiny_vae(sample_size: int, channels, *, layers_per_block: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=tuple(channels),
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        latent_channels=4, layers_per_block=layers_per_block, norm_num_groups=min(32, channels[0]),
        sample_size=sample_size,
    )


def _tiny_text_encoder(hidden: int, projection_dim: int, *, max_length: int, layers: int, heads: int | None):
    """A byte-level CLIP tokenizer (written offline) and a random-weight CLIP text encoder of this size."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_byte_level_tokenizer(folder, model_max_length=max_length))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=heads or max(1, hidden // 16), max_position_embeddings=max_length,
        projection_dim=projection_dim, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(config)


def sd_pndm_scheduler():
    """PNDM (PLMS) with Stable Diffusion 1.x's betas, as in SD 1.5's own model folder.

    >>> sd_pndm_scheduler().config.beta_schedule
    'scaled_linear'
    """
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def make_sd15_sized_pipeline(*, tiny: bool = False, seed: int = 0):
    """A random-weight pipeline with Stable Diffusion 1.5's architecture: UNet 320/640/1280/1280 (2 layers per
    block, 8 attention heads, cross-attention 768), SD VAE 128/256/512/512, a CLIP-L-sized text encoder
    (768 wide, 12 layers, 12 heads, 77 tokens), 512 px. Speed does not depend on weight values, so this is the
    benchmark stand-in for SD 1.5 offline. ``tiny=True`` keeps the structure (4 levels, 2 layers per block)
    at toy widths and 64 px, so the same code path runs in seconds on a CPU (tests).

    >>> make_sd15_sized_pipeline(tiny=True).unet.config.block_out_channels
    (32, 32, 64, 64)
    """
    if tiny:
        return make_tiny_pipeline(seed=seed, sample_size=64, unet_channels=(32, 32, 64, 64),
                                  vae_channels=(16, 16, 32, 32), text_hidden=32, cross_attention_dim=32,
                                  max_length=77, layers_per_block=2, text_layers=2, attention_head_dim=4)
    return make_tiny_pipeline(seed=seed, sample_size=512, unet_channels=(320, 640, 1280, 1280),
                              vae_channels=(128, 256, 512, 512), text_hidden=768, cross_attention_dim=768,
                              max_length=77, layers_per_block=2, text_layers=12, text_heads=12, attention_head_dim=8)


def save_tiny_pipeline(folder: str | Path, **kwargs) -> Path:
    """Build a tiny pipeline and ``save_pretrained`` it to ``folder`` (a real diffusers model folder).

    >>> sorted(path.name for path in save_tiny_pipeline("tiny-sd").iterdir())
    ['model_index.json', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']
    """
    folder = Path(folder)
    make_tiny_pipeline(**kwargs).save_pretrained(folder)
    return folder
