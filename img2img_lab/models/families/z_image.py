"""Z-Image: the FLUX.1 rule with float32 ``torch.linspace`` sigmas and ``mu`` always passed
(``get_default_z_image_sigmas``), a Qwen3 text encoder read through its chat template, and true classifier-free
guidance through ``guidance_scale``.

>>> from img2img_lab.models.handle import as_model
>>> as_model(ZImageFamily.tiny_pipelines["zimage"]()).step_plan("default", 4, 0.5, width=32, height=32).executed_steps
2
"""

from __future__ import annotations

from img2img_lab.models.families.flow_inpaint import FlowInpaint
from img2img_lab.models.families.flux import TrueCFGFluxFamily
from img2img_lab.models.families.sd3 import SD3Conditioning, call_defaults
from img2img_lab.models.families.tiny_parts import as_class, qwen2_tokenizer, tiny_vae


class ZImageConditioning(SD3Conditioning):
    """What the batched loop needs of Z-Image, done as ``ZImageImg2ImgPipeline.__call__`` does it: Qwen3 caption
    embeddings of each prompt's own length (prompts of different lengths run in separate transformer calls), the
    transformer called on a list of one-frame latents with the timestep ``(1000 - t) / 1000``, its output negated,
    and guidance ``pos + g (pos - neg)`` wherever ``g > 0``. The VAE's shift and scale and the flow-matching noise are
    SD3's; latents are not packed.

    >>> zimage = ZImageFamily.tiny_pipelines["zimage"]()
    >>> pair = ZImageConditioning(zimage, zimage.device, zimage.transformer.dtype).encode([("a red square", "")], (32, 32))
    >>> pair[("a red square", "")]["positive"]["encoder_hidden_states"].ndim   # one row per sample
    3
    """

    # Adapted from diffusers.pipelines.z_image.pipeline_z_image_img2img.ZImageImg2ImgPipeline.__call__ (encode_prompt with a negative prompt)
    def encode(self, keys, size) -> dict:
        import torch

        length = call_defaults(self.pipe)["max_sequence_length"]
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                positive, negative_embeds = self.pipe.encode_prompt(
                    prompt=prompt, device=self.device, do_classifier_free_guidance=True,
                    negative_prompt=negative or None, max_sequence_length=length)
                conditioning[(prompt, negative)] = {
                    "positive": {"encoder_hidden_states": positive[0].unsqueeze(0)},
                    "negative": {"encoder_hidden_states": negative_embeds[0].unsqueeze(0)}}
        return conditioning

    def uses_cfg(self, cell) -> bool:
        return cell.guidance_scale > 0  # the pipeline's do_classifier_free_guidance (cfg_truncation 1: always on)

    # Adapted from diffusers.pipelines.z_image.pipeline_z_image_img2img.ZImageImg2ImgPipeline.__call__ (the guidance, cfg_normalization off)
    def guided(self, uncond, text, guidance_scale: float):
        return text + guidance_scale * (text - uncond)

    def encode_source(self, source):
        return self.encode_pixels(self.pipe.image_processor.preprocess(source).to(device=self.device, dtype=self.dtype))

    # Adapted from diffusers.pipelines.z_image.pipeline_z_image_img2img.ZImageImg2ImgPipeline.__call__ (the transformer call on a list of latents; the output negated)
    def predict(self, inputs, t, fields: dict):
        import torch

        timestep = (1000 - t.expand(inputs.shape[0])) / 1000
        latents = list(inputs.to(self.pipe.transformer.dtype).unsqueeze(2).unbind(dim=0))
        captions = list(fields["encoder_hidden_states"].unbind(dim=0))
        outputs = self.pipe.transformer(latents, timestep, captions, joint_attention_kwargs=None)[0]
        return -torch.stack([output.float() for output in outputs], dim=0).squeeze(2)

    def blank_latents(self, size):
        import torch

        factor = self.pipe.vae_scale_factor
        return torch.zeros(1, self.pipe.transformer.in_channels, size[1] // factor, size[0] // factor,
                           device=self.device, dtype=self.dtype)

    def decode(self, latents, conditioning_dtype):
        return super().decode(latents.to(self.pipe.vae.dtype), conditioning_dtype)


def make_tiny_zimage():
    """A random-weight ``ZImageImg2ImgPipeline``: a 2-layer Qwen3 encoder with a byte-level chat tokenizer, a
    one-layer transformer, Z-Image-Turbo's scheduler (flow matching, constant shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen2_tokenizer()
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=1024))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImageImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                                 tokenizer=tokenizer, transformer=transformer)


class ZImageInpaintConditioning(FlowInpaint, ZImageConditioning):
    """``ZImageInpaintPipeline``: Z-Image's prompts, transformer call and guidance (:class:`ZImageConditioning`)
    with :class:`~img2img_lab.models.families.flow_inpaint.FlowInpaint`'s latents and blend on unpacked latents, the
    mask broadcast over the channels (``pipeline_z_image_inpaint.py``: ``prepare_latents``,
    ``prepare_mask_latents``, the loop's blend).

    >>> ZImageFamily(ZImageFamily.tiny_pipelines["zimage-inpaint"]()).batched_conditioning()[1]
    'ZImageInpaintPipeline'
    """

    def _pack(self, latents):
        return latents  # Z-Image's latents are not packed

    def _mask_channels(self) -> int:
        return 1

    def _latent_side(self, pixels: int) -> int:
        return 2 * (int(pixels) // (self.pipe.vae_scale_factor * 2))


class ZImageFamily(TrueCFGFluxFamily):
    """Z-Image: float32 ``torch.linspace`` sigmas and ``mu`` always passed (``get_default_z_image_sigmas``)."""

    name, label = "z-image", "Z-Image"
    pipelines = {"img2img": ("ZImageImg2ImgPipeline",), "inpaint": ("ZImageInpaintPipeline",)}
    text_to_image = {"ZImagePipeline": "ZImageImg2ImgPipeline"}
    tiny_pipelines = {
        "zimage": make_tiny_zimage,
        "zimage-inpaint": lambda: as_class(make_tiny_zimage(), "ZImageInpaintPipeline"),
    }
    batched_classes = {"ZImageImg2ImgPipeline": ZImageConditioning, "ZImageInpaintPipeline": ZImageInpaintConditioning}

    def guidance_used(self, guidance_scale: float) -> bool:
        return guidance_scale > 0  # do_classifier_free_guidance is guidance_scale > 0: 1 guides (pos + 1·(pos - neg))

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        import torch

        arguments = super().timestep_arguments(scheduler, num_inference_steps, strength, width, height)
        arguments["sigmas"] = torch.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
        return arguments
