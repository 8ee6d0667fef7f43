"""Qwen-Image: the FLUX.1 rule on 16-px packed latents, a Qwen2.5-VL text encoder, and a video VAE (one frame). True
classifier-free guidance goes through ``true_cfg_scale`` with a negative prompt: img2img-lab passes the cell's
guidance there, and an empty negative prompt as ``" "`` (the pipeline's docs ask for one), so guidance above 1
always guides.

>>> from img2img_lab.models.handle import as_model
>>> model = as_model(QwenImageFamily.tiny_pipelines["qwenimage"]())
>>> model.family.name, model.size_multiple()   # the tiny VAE's factor 2, packed 2x2
('qwenimage', 4)
"""

from __future__ import annotations

from img2img_lab.models.families.base import sample_latent
from img2img_lab.models.families.flux import FluxConditioning, FluxInpaintConditioning, TrueCFGFluxFamily
from img2img_lab.models.families.sd3 import call_defaults
from img2img_lab.models.families.tiny_parts import as_class, qwen2_tokenizer

_EDITOR = "edits from a reference image and always starts from noise: it has no strength dial"


def tiny_qwen25_vl(tokenizer, hidden: int = 16):
    """A random 2-layer ``Qwen2_5_VLForConditionalGeneration`` (text and vision towers) for ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab_size = len(tokenizer)
    text = dict(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=vocab_size, rope_theta=1_000_000.0, bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"})
    vision = dict(depth=2, hidden_size=hidden, intermediate_size=hidden, num_heads=2, out_hidden_size=hidden)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, hidden_size=hidden, vocab_size=vocab_size, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def make_tiny_qwenimage():
    """A random-weight ``QwenImageImg2ImgPipeline``: a tiny Qwen2.5-VL encoder with a byte-level tokenizer, a one-layer
    transformer, a 2-level video VAE, Qwen-Image's scheduler (exponential time shift, dynamic)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline,
                           QwenImageTransformer2DModel)

    tokenizer = qwen2_tokenizer()
    text_encoder = tiny_qwen25_vl(tokenizer)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config.json (exponential, dynamic shift)
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        use_dynamic_shifting=True, time_shift_type="exponential")
    return QwenImageImg2ImgPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    transformer=transformer)


class QwenImageConditioning(FluxConditioning):
    """What the batched loop needs of Qwen-Image, done as ``QwenImageImg2ImgPipeline.__call__`` does it: Qwen2.5-VL
    embeddings whose length is the prompt's own (prompts of different lengths run in separate denoiser calls), true
    classifier-free guidance with the norm rescale, the video VAE's one frame normalised by ``latents_mean/std``,
    latents packed in 2x2 patches, and the image shapes the transformer takes.

    >>> qwen = QwenImageFamily.tiny_pipelines["qwenimage"]()
    >>> conditioner = QwenImageConditioning(qwen, qwen.device, qwen.transformer.dtype, size=(32, 32))
    >>> tuple(conditioner.blank_latents((32, 32)).shape)   # 16x16 latents of 4 channels in 8x8 patches of 2x2
    (1, 64, 16)
    """

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline.__call__ (step 3: encode_prompt for the prompt and, for true CFG, the negative prompt)
    def encode(self, keys, size) -> dict:
        import torch

        length = call_defaults(self.pipe)["max_sequence_length"]
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                branches = {}
                for branch, text in (("positive", prompt), ("negative", negative or " ")):
                    embeds, mask = self.pipe.encode_prompt(prompt=text, device=self.device, num_images_per_prompt=1,
                                                           max_sequence_length=length)
                    branches[branch] = {"encoder_hidden_states": embeds}
                    if mask is not None:
                        branches[branch]["encoder_hidden_states_mask"] = mask
                conditioning[(prompt, negative)] = branches
        return conditioning

    def uses_cfg(self, cell) -> bool:
        return cell.guidance_scale > 1.0  # true_cfg_scale, with a negative prompt always given

    def sample_fields(self, cell) -> dict:
        return {}

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline.__call__ (true CFG with the norm rescale)
    def guided(self, uncond, text, guidance_scale: float):
        import torch

        combined = uncond + guidance_scale * (text - uncond)
        return combined * (torch.norm(text, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def _normalisation(self, like):
        import torch

        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    def encode_source(self, source):
        pixels = self.pipe.image_processor.preprocess(source, height=source.height, width=source.width)
        return self.encode_pixels(pixels.unsqueeze(2).to(device=self.device, dtype=self.dtype))  # one frame

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline.prepare_latents (_encode_vae_image, then [B,1,z,H',W'])
    def initial_latents(self, distribution, generator):
        latents = sample_latent(distribution, generator)
        mean, inverse_std = self._normalisation(latents)
        return ((latents - mean) * inverse_std).transpose(1, 2)

    def noised(self, scheduler, latents, noise, timestep):
        noised = scheduler.scale_noise(latents, timestep, noise)
        *_, channels, height, width = noised.shape
        return self.pipe._pack_latents(noised, 1, channels, height, width)

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline.__call__ (the transformer calls)
    def predict(self, inputs, t, fields: dict):
        factor, (width, height) = self.pipe.vae_scale_factor, self.size
        timestep = t.expand(inputs.shape[0]).to(inputs.dtype)
        shapes = [[(1, height // factor // 2, width // factor // 2)]] * inputs.shape[0]
        return self.pipe.transformer(hidden_states=inputs, timestep=timestep / 1000, guidance=None,
                                     encoder_hidden_states_mask=fields.get("encoder_hidden_states_mask"),
                                     encoder_hidden_states=fields["encoder_hidden_states"], img_shapes=shapes,
                                     attention_kwargs={}, return_dict=False)[0]

    def blank_latents(self, size):
        import torch

        channels = self.pipe.transformer.config.in_channels // 4
        height, width = self._latent_side(size[1]), self._latent_side(size[0])
        zeros = torch.zeros(1, 1, channels, height, width, device=self.device, dtype=self.dtype)
        return self.pipe._pack_latents(zeros, 1, channels, height, width)

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline.__call__ (the decode)
    def decode(self, latents, conditioning_dtype):
        import torch

        width, height = self.size
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor).to(vae.dtype)
        mean, inverse_std = self._normalisation(latents)
        with torch.no_grad():
            return vae.decode(latents / inverse_std + mean, return_dict=False)[0][:, :, 0], None


class QwenImageInpaintConditioning(QwenImageConditioning, FluxInpaintConditioning):
    """``QwenImageInpaintPipeline``: Qwen-Image's prompts, one-frame latents and true CFG
    (:class:`QwenImageConditioning`) with FLUX.1 inpainting's packed mask and latent blend after every step
    (:class:`FluxInpaintConditioning`), as ``pipeline_qwenimage_inpaint.py``'s ``prepare_latents``,
    ``prepare_mask_latents`` (the masked source encoded as one frame) and loop do.

    >>> QwenImageFamily(QwenImageFamily.tiny_pipelines["qwenimage-inpaint"]()).batched_conditioning()[1]
    'QwenImageInpaintPipeline'
    """

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_inpaint.QwenImageInpaintPipeline.prepare_mask_latents (the masked image as one frame)
    def masked_distribution(self, masked):
        return self.pipe.vae.encode(masked.unsqueeze(2)).latent_dist


class QwenImageFamily(TrueCFGFluxFamily):
    """QwenImage: the FLUX.1 rule on 16-px packed latents; true CFG through ``true_cfg_scale`` and a negative prompt."""

    name, label = "qwenimage", "Qwen-Image"
    pipelines = {"img2img": ("QwenImageImg2ImgPipeline",), "inpaint": ("QwenImageInpaintPipeline",)}
    text_to_image = {"QwenImagePipeline": "QwenImageImg2ImgPipeline"}
    no_strength = {"QwenImageEditPipeline": _EDITOR, "QwenImageEditPlusPipeline": _EDITOR,
                   "QwenImageLayeredPipeline": "splits an image into layers from noise: it has no strength dial"}
    refused = {"QwenImageEditInpaintPipeline": "resizes every image to a one-megapixel area before it denoises "
                                               "(calculate_dimensions(1024 * 1024, ratio)), so its output is not at "
                                               "the source's size, which img2img-lab's records and metrics assume"}
    scheduler_configs = ("qwen-image",)
    tiny_pipelines = {
        "qwenimage": make_tiny_qwenimage,
        "qwenimage-inpaint": lambda: as_class(make_tiny_qwenimage(), "QwenImageInpaintPipeline"),
    }
    batched_classes = {"QwenImageImg2ImgPipeline": QwenImageConditioning,
                       "QwenImageInpaintPipeline": QwenImageInpaintConditioning}

    def batched_conditioning(self) -> tuple[type | None, str]:
        if getattr(self.pipe.transformer.config, "guidance_embeds", False):
            return None, "a guidance-distilled Qwen-Image transformer takes guidance_scale, which is not swept: run per cell"
        return super().batched_conditioning()

    def call_extras(self, guidance_scale: float, negative_prompt: str) -> dict:
        return {"true_cfg_scale": guidance_scale, "negative_prompt": negative_prompt or " "}

    # Adapted from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img.QwenImageImg2ImgPipeline._encode_vae_image (one frame of a video VAE)
    def encode_pixels(self, vae, pixels):
        return vae.encode(pixels.unsqueeze(2))  # (B, C, T=1, H, W)

    def decode_latents(self, vae, latents):
        return vae.decode(latents, return_dict=False)[0][:, :, 0]
