"""Random-weight components small enough to run a pipeline call in milliseconds, built offline from configs alone:
the parts every family module's tiny pipelines (``tiny_pipelines``) are made of. Tests and benchmarks only; never a
model. Tokenizers are byte-level (:mod:`img2img_lab._utils.bpe`) or word-level (T5): every text tokenizes.

>>> encoder, tokenizer = tiny_t5()
>>> tokenizer("a red cat").input_ids
[3, 8, 14, 1]
>>> tiny_vae(16, flow=True).config.latent_channels
16
"""

from __future__ import annotations

import tempfile

_T5_WORDS = ("a", "an", "the", "on", "of", "red", "green", "blue", "yellow", "white", "black", "cat", "dog",
             "circle", "square", "star", "photo", "painting", "background", "blurry", "bright")


def clip_tokenizer(max_length: int = 16):
    """A merge-free byte-level ``CLIPTokenizer`` of ``max_length`` tokens."""
    from transformers import CLIPTokenizer

    from img2img_lab._utils.bpe import write_clip_bpe

    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_clip_bpe(folder, [], model_max_length=max_length))


def tiny_clip(hidden: int = 32, *, projection: bool = False, max_length: int = 16, layers: int = 2,
              heads: int | None = None, intermediate: int | None = None):
    """``(CLIP text encoder, tokenizer)``: with a projection (``CLIPTextModelWithProjection``, SDXL's second
    encoder, SD3's) or without (SD's)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(max_length)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                            intermediate_size=intermediate or hidden * 2, num_hidden_layers=layers,
                            num_attention_heads=heads or 2, max_position_embeddings=max_length,
                            projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def t5_tokenizer(max_length: int = 512):
    """A word-level unigram ``T5Tokenizer`` (a few colour, shape and scene words; the rest is ``<unk>``), built offline:
    pad 0, end 1, unknown 2."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{word}", -float(index + 1)) for index, word in enumerate(_T5_WORDS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def tiny_t5(hidden: int = 32):
    """``(T5EncoderModel, T5Tokenizer)``: a 2-layer random T5 encoder and a word-level unigram tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=hidden, d_ff=hidden * 2, d_kv=8, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config), tokenizer


def qwen2_tokenizer():
    """A merge-free byte-level ``Qwen2Tokenizer`` with Qwen's special tokens and chat template."""
    from transformers import Qwen2Tokenizer

    from img2img_lab._utils.bpe import write_qwen2_bpe

    with tempfile.TemporaryDirectory() as folder:
        return Qwen2Tokenizer.from_pretrained(write_qwen2_bpe(folder))


def tiny_vae(latent_channels: int, *, blocks=(8, 16), flow: bool = False, layers_per_block: int = 1,
             sample_size: int = 32, norm_groups: int | None = None):
    """A random ``AutoencoderKL`` (VAE factor ``2 ** (len(blocks) - 1)``); ``flow``: FLUX.1/SD3-style shift and
    scaling, no quant convs."""
    from diffusers import AutoencoderKL

    extra = {"shift_factor": 0.0609, "scaling_factor": 1.5035, "use_quant_conv": False,
             "use_post_quant_conv": False} if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(blocks),
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), latent_channels=latent_channels,
                         layers_per_block=layers_per_block, norm_num_groups=norm_groups or min(8, blocks[0]),
                         sample_size=sample_size, **extra)


def tiny_unet(in_channels: int = 4, *, cross: int = 32, channels=(32, 64), sample_size: int = 16, **extra):
    """A 2-level random ``UNet2DConditionModel`` (plain down block, then a cross-attention one)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels, out_channels=4,
                                block_out_channels=tuple(channels), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross,
                                norm_num_groups=8, **{"attention_head_dim": 4, **extra})


def unzeroed(controlnet):
    """A ControlNet whose zero-initialised layers get random weights (a trained one's are not zero): its output layers
    and the last layer of its control-image embedding (``conv_out``). Otherwise the control image would change
    nothing and a test could not tell whether it was passed (with that layer at zero, SD's tiny ControlNet
    inpainting gave the same pixels for a black control image)."""
    import torch

    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_blocks",
                                "controlnet_single_blocks", "controlnet_x_embedder", "spatial_ch_projs",
                                "controlnet_cond_embedding.conv_out", "input_hint_block.conv_out")):
                parameter.normal_(0.0, 1.0 if name.endswith("conv_out.weight") else 0.2)
    return controlnet


def unet_controlnet(unet):
    """A random ControlNet of a UNet's shape (``ControlNetModel.from_unet``), output layers not zero."""
    from diffusers import ControlNetModel

    return unzeroed(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)))


def unet_union_controlnet(unet, *, modes: int = 4):
    """A random union ControlNet (SDXL's ControlNet++: ``ControlNetUnionModel``, ``modes`` control types) of a UNet's
    shape, its task transformer one narrow layer, output layers not zero.

    >>> from img2img_lab.models.families.sdxl import make_tiny_sdxl
    >>> unet_union_controlnet(make_tiny_sdxl().unet).config.num_control_type
    4
    """
    from diffusers import ControlNetUnionModel

    shared = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "norm_num_groups",
              "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim", "use_linear_projection",
              "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
    width = unet.config.block_out_channels[0]
    return unzeroed(ControlNetUnionModel(**{name: unet.config[name] for name in shared}, num_control_type=modes,
                                         num_trans_channel=width, num_trans_head=2, num_proj_channel=width,
                                         conditioning_embedding_out_channels=(8, 16)))


def for_inference(pipe):
    """``pipe`` with every component in evaluation mode, as ``from_pretrained`` leaves them (a model built from its
    config is in training mode: T5's dropout of 0.1 made two identical calls differ by up to 3/255)."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_class(base, class_name: str, **extra):
    """The diffusers pipeline ``class_name`` made of ``base``'s components (those its ``__init__`` takes), plus
    ``extra`` (a ControlNet, PAG's layers...)."""
    import diffusers

    cls = getattr(diffusers, class_name)
    expected, optional = cls._get_signature_keys(cls)
    components = {name: value for name, value in base.components.items() if name in set(expected) | set(optional)}
    return cls(**{**components, **extra})


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


def make_tiny_sd2_v():
    """:func:`make_tiny_pipeline` with SD 2.x 768-v's scheduler: DDIM, v-prediction.

    >>> make_tiny_sd2_v().scheduler.config.prediction_type
    'v_prediction'
    """
    from diffusers import DDIMScheduler

    pipe = make_tiny_pipeline()
    pipe.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   prediction_type="v_prediction")
    return pipe


def sd_variant(class_name: str, *, controlnet: bool = False, unet_channels: int = 4, **extra):
    """:func:`make_tiny_pipeline`'s parts as ``class_name`` (a Stable Diffusion pipeline class): with a ControlNet
    made from its UNet, a UNet of ``unet_channels`` input channels, PAG on the mid block.

    >>> type(sd_variant("StableDiffusionPAGInpaintPipeline")).__name__
    'StableDiffusionPAGInpaintPipeline'
    """
    base = make_tiny_pipeline()
    if unet_channels != 4:
        extra["unet"] = tiny_unet(unet_channels)
    if controlnet:
        extra["controlnet"] = unet_controlnet(base.unet)
    if "PAG" in class_name:
        extra["pag_applied_layers"] = "mid"
    return as_class(base, class_name, **extra)


def flux_dev_scheduler():
    """FLUX.1-dev's ``scheduler/scheduler_config.json``: flow matching with dynamic shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                           max_shift=1.15, shift=3.0, use_dynamic_shifting=True)


def tiny_flux_transformer(*, guidance: bool, in_channels: int = 16, out_channels: int | None = None):
    """A one-layer random ``FluxTransformer2DModel`` (with or without a guidance embedding)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=in_channels, out_channels=out_channels, num_layers=1,
                                  num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                  guidance_embeds=guidance)


def make_tiny_flux(*, guidance: bool = True):
    """A random-weight ``FluxImg2ImgPipeline``: CLIP + T5, a one-layer transformer; FLUX.1-dev's scheduler and a
    guidance embedding, or FLUX.1-schnell's constant shift without one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline

    text_encoder, tokenizer = tiny_clip(32)
    text_encoder_2, tokenizer_2 = tiny_t5(32)
    transformer = tiny_flux_transformer(guidance=guidance)
    scheduler = flux_dev_scheduler() if guidance else FlowMatchEulerDiscreteScheduler(shift=1.0,
                                                                                      use_dynamic_shifting=False)
    return FluxImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                               tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                               transformer=transformer)


def tiny_flux_controlnet(*, xlabs: bool = False, modes: int | None = None):
    """A one-layer random ``FluxControlNetModel``, its zero blocks unzeroed: InstantX-style (it reads the control
    image's packed latents), or ``xlabs``: an input hint block reads its pixels (8x down, 4 channels in 2x2 patches),
    for a pipeline whose VAE factor is 8 (:func:`make_tiny_flux_xlabs`); ``modes``: a union ControlNet (``num_mode``),
    as InstantX's FLUX.1 Union."""
    from diffusers import FluxControlNetModel

    hint = {"patch_size": 2, "conditioning_embedding_channels": 4} if xlabs else {"patch_size": 1}
    return unzeroed(FluxControlNetModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                        axes_dims_rope=[4, 4, 8], guidance_embeds=True, num_mode=modes, **hint))


def with_pooled_controlnet(pipe):
    """``pipe`` with its ControlNet pooling its residuals (``global_pool_conditions``, as a shuffle ControlNet does),
    which the SD and SDXL ControlNet img2img pipelines run in guess mode.

    >>> pipe = with_pooled_controlnet(sd_variant("StableDiffusionControlNetImg2ImgPipeline", controlnet=True))
    >>> pipe.controlnet.config["global_pool_conditions"]
    True
    """
    pipe.controlnet.register_to_config(global_pool_conditions=True)
    return pipe


def with_two_controlnets(pipe):
    """``pipe`` with a ``MultiControlNetModel`` of its ControlNet and a second random one of its UNet's shape (SD,
    SDXL), which takes a control image each.

    >>> pipe = with_two_controlnets(sd_variant("StableDiffusionControlNetImg2ImgPipeline", controlnet=True))
    >>> type(pipe.controlnet).__name__, len(pipe.controlnet.nets)
    ('MultiControlNetModel', 2)
    """
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    pipe.controlnet = MultiControlNetModel([pipe.controlnet, unet_controlnet(pipe.unet)])
    return pipe


def with_two_flux_controlnets(pipe):
    """A FLUX.1 ControlNet pipeline with a ``FluxMultiControlNetModel`` of its ControlNet and a second random
    InstantX-style one, which takes a control image each.

    >>> len(with_two_flux_controlnets(as_class(make_tiny_flux(), "FluxControlNetImg2ImgPipeline",
    ...                                        controlnet=tiny_flux_controlnet())).controlnet.nets)
    2
    """
    from diffusers import FluxMultiControlNetModel

    pipe.controlnet = FluxMultiControlNetModel([pipe.controlnet, tiny_flux_controlnet()])
    return for_inference(pipe)


def make_tiny_flux_xlabs(class_name: str = "FluxControlNetImg2ImgPipeline"):
    """FLUX.1 ControlNet img2img (or ``class_name``) with an XLabs-style ControlNet and a VAE of factor 8, as its
    hint block assumes.

    >>> pipe = make_tiny_flux_xlabs()
    >>> pipe.vae_scale_factor, pipe.controlnet.input_hint_block is not None
    (8, True)
    """
    return for_inference(as_class(make_tiny_flux(), class_name, controlnet=tiny_flux_controlnet(xlabs=True),
                                  vae=tiny_vae(4, blocks=(8, 8, 16, 16), flow=True)))


def tiny_flux_control(class_name: str):
    """FLUX.1 Control: the packed control latents are concatenated to the packed latents (twice the channels in)."""
    return as_class(make_tiny_flux(), class_name, transformer=tiny_flux_transformer(guidance=True, in_channels=32,
                                                                           out_channels=16))
