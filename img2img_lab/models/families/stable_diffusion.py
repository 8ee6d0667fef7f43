"""Stable Diffusion 1.x / 2.x: img2img, inpainting, PAG and ControlNet pipelines, the batched conditioning of plain
img2img, and the tiny random pipelines its tests run.

The strength rule is the base one (``init = min(int(N·s), N)``, ``timesteps[t_start·order:]``); inpainting
pipelines with a 4-channel UNet blend latents, 9-channel ones read the masked image as extra channels.

>>> StableDiffusionFamily.task_of("StableDiffusionControlNetInpaintPipeline")
'controlnet-inpaint'
>>> make_tiny_pipeline().vae_scale_factor, type(make_tiny_pipeline().scheduler).__name__
(2, 'PNDMScheduler')
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family, sample_latent
from img2img_lab.models.families.tiny_parts import as_class, tiny_clip, tiny_unet, tiny_vae, unet_controlnet


class TextConditioning:
    """What the batched loop needs of Stable Diffusion, done as the pipeline's ``__call__`` does it.

    ``encode`` returns per (prompt, negative) the tensors each sample of that prompt sends to the UNet, as
    ``{"positive": {...}, "negative": {...}}`` (``encoder_hidden_states`` here); ``initial_latents`` turns a
    source's VAE distribution into the scaled initial latent (``prepare_latents``); ``decode`` turns final latents
    into images and NSFW flags.

    >>> family = TextConditioning(pipe, pipe.device, pipe.unet.dtype)  # the embedded model: 16 tokens of 128
    >>> pair = family.encode([("a red square", "")], (64, 64))[("a red square", "")]
    >>> tuple(pair["positive"]["encoder_hidden_states"].shape), sorted(pair["negative"])
    ((1, 16, 128), ['encoder_hidden_states'])
    """

    added_fields: tuple[str, ...] = ()

    def __init__(self, pipe, device, dtype):
        self.pipe, self.device, self.dtype = pipe, device, dtype

    def encode(self, keys, size) -> dict:
        import torch

        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds = self.pipe.encode_prompt(prompt, self.device, 1, True, negative or None)
                conditioning[(prompt, negative)] = {"positive": {"encoder_hidden_states": positive},
                                                    "negative": {"encoder_hidden_states": negative_embeds}}
        return conditioning

    def encode_source(self, source):
        """The VAE's latent distribution of a prepared source (one encoder pass)."""
        import torch

        pixels = self.pipe.image_processor.preprocess(source).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            return self.pipe.vae.encode(pixels).latent_dist

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.prepare_latents
    def initial_latents(self, distribution, generator):
        return self.pipe.vae.config.scaling_factor * sample_latent(distribution, generator)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.__call__ (step 9: decode, safety checker)
    def decode(self, latents, conditioning_dtype):
        import torch

        with torch.no_grad():
            decoded = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor, return_dict=False)[0]
            return self.pipe.run_safety_checker(decoded, self.device, conditioning_dtype)


def sd_pndm_scheduler():
    """PNDM (PLMS) with Stable Diffusion 1.x's betas, as in SD 1.5's own model folder.

    >>> sd_pndm_scheduler().config.beta_schedule
    'scaled_linear'
    """
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def make_tiny_pipeline(*, seed: int = 0, sample_size: int = 32, unet_channels: tuple[int, ...] = (32, 64),
                       vae_channels: tuple[int, ...] = (32, 64), text_hidden: int = 32, cross_attention_dim: int = 32,
                       attention: bool = True, max_length: int = 16, layers_per_block: int = 1,
                       text_layers: int = 2, text_heads: int | None = None, attention_head_dim: int | None = None):
    """A random-weight :class:`StableDiffusionImg2ImgPipeline` (CPU, fp32) from configs alone: UNet, VAE, a CLIP text
    encoder with a byte-level tokenizer, SD 1.x's PNDM scheduler. ``sample_size`` is the image side in pixels; the
    VAE factor is ``2 ** (len(vae_channels) - 1)``; larger widths give realistically shaped models.
    """
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    if text_hidden != cross_attention_dim:
        raise ValueError("text_hidden must equal cross_attention_dim (the UNet reads the encoder's hidden states).")
    torch.manual_seed(seed)  # the components draw their random weights in this order: UNet, VAE, text encoder
    vae_factor = 2 ** (len(vae_channels) - 1)
    down = ["CrossAttnDownBlock2D" if attention else "DownBlock2D"] * (len(unet_channels) - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D" if attention else "UpBlock2D"] * (len(unet_channels) - 1)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=sample_size // vae_factor, in_channels=4, out_channels=4, block_out_channels=tuple(unet_channels),
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2DCrossAttn" if attention else None, cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim or (max(1, unet_channels[0] // 8) if attention else 8),
        norm_num_groups=min(32, unet_channels[0]))
    vae = tiny_vae(4, blocks=vae_channels, layers_per_block=layers_per_block, sample_size=sample_size,
                   norm_groups=min(32, vae_channels[0]))
    text_encoder, tokenizer = tiny_clip(text_hidden, max_length=max_length, layers=text_layers,
                                        heads=text_heads or max(1, text_hidden // 16), intermediate=text_hidden * 4)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=sd_pndm_scheduler(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sd15_sized_pipeline(*, tiny: bool = False, seed: int = 0):
    """A random-weight pipeline with Stable Diffusion 1.5's architecture: UNet 320/640/1280/1280 (2 layers per
    block, 8 attention heads, cross-attention 768), SD VAE 128/256/512/512, a CLIP-L-sized text encoder (768 wide,
    12 layers, 12 heads, 77 tokens), 512 px. Speed does not depend on weight values, so this is the benchmark
    stand-in for SD 1.5 offline. ``tiny=True`` keeps the structure (4 levels, 2 layers per block) at toy widths and
    64 px, so the same code path runs in seconds on a CPU (tests).

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


def _sd2_v():
    from diffusers import DDIMScheduler

    pipe = make_tiny_pipeline()
    pipe.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   prediction_type="v_prediction")
    return pipe


def _variant(class_name: str, *, controlnet: bool = False, unet_channels: int = 4, **extra):
    base = make_tiny_pipeline()
    if unet_channels != 4:
        extra["unet"] = tiny_unet(unet_channels)
    if controlnet:
        extra["controlnet"] = unet_controlnet(base.unet)
    if "PAG" in class_name:
        extra["pag_applied_layers"] = "mid"
    return as_class(base, class_name, **extra)


class StableDiffusionFamily(Family):
    name, label = "sd", "Stable Diffusion 1.x / 2.x"
    pipelines = {
        "img2img": ("StableDiffusionImg2ImgPipeline", "StableDiffusionPAGImg2ImgPipeline"),
        "inpaint": ("StableDiffusionInpaintPipeline", "StableDiffusionPAGInpaintPipeline"),
        "controlnet-img2img": ("StableDiffusionControlNetImg2ImgPipeline",),
        "controlnet-inpaint": ("StableDiffusionControlNetInpaintPipeline",
                               "StableDiffusionControlNetPAGInpaintPipeline"),
    }
    text_to_image = {"StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
                     "StableDiffusionPAGPipeline": "StableDiffusionPAGImg2ImgPipeline",
                     "StableDiffusionControlNetPipeline": "StableDiffusionControlNetImg2ImgPipeline"}
    no_strength = {"StableUnCLIPImg2ImgPipeline": "makes variations from an image embedding, starting from noise: it "
                                                  "has no strength dial"}
    scheduler_configs = ("sd15", "sd21")
    real_size = ("sd15",)
    tiny_pipelines = {
        "sd1": make_tiny_pipeline,  # PNDM, SD 1.x betas, epsilon
        "sd2-v": _sd2_v,  # DDIM, v-prediction (SD 2.x 768-v)
        "sd-pag": lambda: _variant("StableDiffusionPAGImg2ImgPipeline"),
        "sd-inpaint": lambda: _variant("StableDiffusionInpaintPipeline"),  # 4-channel UNet: latent blend
        "sd-inpaint-9": lambda: _variant("StableDiffusionInpaintPipeline", unet_channels=9),  # masked-image channels
        "sd-pag-inpaint": lambda: _variant("StableDiffusionPAGInpaintPipeline"),
        "sd-controlnet": lambda: _variant("StableDiffusionControlNetImg2ImgPipeline", controlnet=True),
        "sd-controlnet-inpaint": lambda: _variant("StableDiffusionControlNetInpaintPipeline", controlnet=True),
        "sd-controlnet-pag-inpaint": lambda: _variant("StableDiffusionControlNetPAGInpaintPipeline", controlnet=True),
    }

    #: The one class the batched engine reproduces (plain img2img: no mask, control image or PAG branch).
    batched_class = "StableDiffusionImg2ImgPipeline"
    conditioning: type = TextConditioning

    def batched_conditioning(self) -> tuple[type | None, str]:
        name = type(self.pipe).__name__
        if name != self.batched_class:
            return None, (f"{name} is run per cell (the batched engine reproduces plain {self.batched_class} calls "
                          f"only)")
        if getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None:
            return None, "the UNet has a guidance embedding (LCM-style): run per cell"
        return self.conditioning, name
