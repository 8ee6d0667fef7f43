"""Chroma: the FLUX.1 rule (``sigmas = linspace(1, 1/N, N)``, ``mu`` from the token count, packed latents), with a
single T5 encoder and true classifier-free guidance through ``guidance_scale`` and a negative prompt.

>>> ChromaFamily.task_of("ChromaInpaintPipeline"), ChromaFamily.tiny_pipelines["chroma-constant"]().scheduler.config.shift
('inpaint', 1.0)
"""

from __future__ import annotations

from img2img_lab.models.families.flux import FluxConditioning, FluxInpaintConditioning, TrueCFGFluxFamily
from img2img_lab.models.families.sd3 import call_defaults
from img2img_lab.models.families.tiny_parts import as_class, flux_dev_scheduler, tiny_t5, tiny_vae


class ChromaConditioning(FluxConditioning):
    """What the batched loop needs of Chroma, done as ``ChromaImg2ImgPipeline.__call__`` does it: FLUX.1's packed
    latents and VAE, one T5 encoder whose attention mask (extended over the image tokens) goes with every sample, no
    guidance embedding, and true classifier-free guidance (a negative sample) above guidance 1.

    >>> chroma = ChromaFamily.tiny_pipelines["chroma-dynamic"]()
    >>> pair = ChromaConditioning(chroma, chroma.device, chroma.transformer.dtype).encode([("a red square", "")], (32, 32))
    >>> sorted(pair[("a red square", "")]["negative"])
    ['attention_mask', 'encoder_hidden_states']
    """

    # Adapted from diffusers.pipelines.chroma.pipeline_chroma_img2img.ChromaImg2ImgPipeline.__call__ (encode_prompt, _prepare_attention_mask)
    def encode(self, keys, size) -> dict:
        import torch

        length = call_defaults(self.pipe)["max_sequence_length"]
        tokens = (int(size[1]) // self.pipe.vae_scale_factor // 2) * (int(size[0]) // self.pipe.vae_scale_factor // 2)
        conditioning = {}
        with torch.no_grad():
            for prompt, negative in keys:
                embeds, self.text_ids, mask, negative_embeds, _, negative_mask = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=negative or None, do_classifier_free_guidance=True,
                    device=self.device, num_images_per_prompt=1, max_sequence_length=length)
                conditioning[(prompt, negative)] = {
                    branch: {"encoder_hidden_states": states,
                             "attention_mask": self.pipe._prepare_attention_mask(1, tokens, states.dtype, branch_mask)}
                    for branch, states, branch_mask in (("positive", embeds, mask),
                                                        ("negative", negative_embeds, negative_mask))}
        self.image_ids = self.latent_image_ids(size, embeds.dtype)
        return conditioning

    def latent_image_ids(self, size, dtype):
        height, width = self._latent_side(size[1]), self._latent_side(size[0])
        return self.pipe._prepare_latent_image_ids(height // 2, width // 2, self.device, dtype)  # no batch argument

    def uses_cfg(self, cell) -> bool:
        return cell.guidance_scale > 1.0

    def sample_fields(self, cell) -> dict:
        return {}

    # Adapted from diffusers.pipelines.chroma.pipeline_chroma_img2img.ChromaImg2ImgPipeline.__call__ (the transformer calls)
    def predict(self, inputs, t, fields: dict):
        return self.pipe.transformer(hidden_states=inputs, timestep=t.expand(inputs.shape[0]) / 1000,
                                     encoder_hidden_states=fields["encoder_hidden_states"], txt_ids=self.text_ids,
                                     img_ids=self.image_ids, attention_mask=fields["attention_mask"],
                                     joint_attention_kwargs={}, return_dict=False)[0]


class ChromaInpaintConditioning(ChromaConditioning, FluxInpaintConditioning):
    """``ChromaInpaintPipeline``: Chroma's prompts, transformer call and true CFG (:class:`ChromaConditioning`) with
    FLUX.1 inpainting's latents, packed mask and latent blend after every step (:class:`FluxInpaintConditioning`):
    diffusers' Chroma inpainting copies ``FluxInpaintPipeline``'s ``prepare_latents``, ``prepare_mask_latents`` and
    blend (``pipeline_chroma_inpainting.py``).

    >>> ChromaFamily(ChromaFamily.tiny_pipelines["chroma-inpaint"]()).batched_conditioning()[1]
    'ChromaInpaintPipeline'
    """

    latent_image_ids = FluxConditioning.latent_image_ids  # the inpainting pipeline's ids take a batch argument


def make_tiny_chroma(*, dynamic: bool = True):
    """A random-weight ``ChromaImg2ImgPipeline``: a T5, a one-layer Chroma transformer; a dynamic-shift scheduler (as
    FLUX.1-dev's) or a constant shift of 1."""
    from diffusers import ChromaImg2ImgPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    text_encoder, tokenizer = tiny_t5(32)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=(4, 4, 8), approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    # lodestones/Chroma1-HD's transformer/config.json carries guidance_embeds: false (the model ignores it, diffusers
    # keeps it in the config: huggingface/diffusers#12112), and ChromaInpaintPipeline.__call__ reads it.
    transformer.register_to_config(guidance_embeds=False)
    scheduler = flux_dev_scheduler() if dynamic else FlowMatchEulerDiscreteScheduler(shift=1.0,
                                                                                     use_dynamic_shifting=False)
    return ChromaImg2ImgPipeline(scheduler=scheduler, vae=tiny_vae(4, flow=True), text_encoder=text_encoder,
                                 tokenizer=tokenizer, transformer=transformer)


class ChromaFamily(TrueCFGFluxFamily):
    """Chroma: the FLUX.1 rule; true classifier-free guidance through ``guidance_scale`` with a negative prompt."""

    name, label = "chroma", "Chroma"
    pipelines = {"img2img": ("ChromaImg2ImgPipeline",), "inpaint": ("ChromaInpaintPipeline",)}
    text_to_image = {"ChromaPipeline": "ChromaImg2ImgPipeline"}
    tiny_pipelines = {
        "chroma-dynamic": make_tiny_chroma,
        "chroma-constant": lambda: make_tiny_chroma(dynamic=False),
        "chroma-inpaint": lambda: as_class(make_tiny_chroma(), "ChromaInpaintPipeline"),
    }
    batched_classes = {"ChromaImg2ImgPipeline": ChromaConditioning, "ChromaInpaintPipeline": ChromaInpaintConditioning}
