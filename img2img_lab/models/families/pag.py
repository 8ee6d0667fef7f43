"""Perturbed-attention guidance (PAG) in the batched engine, mixed into Stable Diffusion's, SDXL's and SD3's
conditioning.

A PAG pipeline sends each cell's samples through its UNet as one batch laid out by its attention processors: under
classifier-free guidance ``[negative, positive, perturbed]`` (``chunk(3)``), without it ``[positive, perturbed]``;
the perturbed sample's self-attention in the PAG layers is replaced by the identity (its value projection). The
batched engine mixes many cells in one call, so its processor is told per call which samples are perturbed
(:class:`MaskedPAGProcessor`; SD3's joint attention: :class:`MaskedJointPAGProcessor`, whose perturbed image tokens
see only themselves and the prompt) and computes each row as the pipeline's processor computes it. The guidance is the
pipeline's ``_apply_perturbed_attention_guidance`` with its default ``pag_scale`` and ``pag_adaptive_scale``.

>>> from img2img_lab.models.families.stable_diffusion import StableDiffusionFamily
>>> StableDiffusionFamily(StableDiffusionFamily.tiny_pipelines["sd-pag"]()).batched_conditioning()[1]
'StableDiffusionPAGImg2ImgPipeline'
"""

from __future__ import annotations

from contextlib import contextmanager

from img2img_lab.models.families.base import call_parameters

#: Why ``StableDiffusionPAGInpaintPipeline`` cannot crop around the mask (diffusers 0.42.1).
PAG_INPAINT_CROP = ("its __call__ hands check_inputs output_type=None (pipeline_pag_sd_inpaint.py), so diffusers "
                    "refuses every padding_mask_crop ('The output type should be PIL when inpainting mask crop')")


# Adapted from diffusers.models.attention_processor.PAGCFGIdentitySelfAttnProcessor2_0 (a mask of perturbed samples in place of the batch's chunks)
class MaskedPAGProcessor:
    """A PAG layer's self-attention for a batch of any layout: scaled dot-product attention for the rows
    ``guidance.perturbed`` leaves out, the identity attention (the value projection) for the rows it marks."""

    def __init__(self, guidance):
        self.guidance = guidance

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        import torch

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if hidden_states.ndim != 3 or attention_mask is not None:
            raise ValueError("the batched PAG processor takes a UNet transformer's self-attention (3-d, no mask)")
        perturbed = self.guidance.perturbed
        output = torch.empty_like(hidden_states)
        normal = hidden_states[~perturbed]
        if normal.shape[0]:
            output[~perturbed] = _attention(attn, normal)
        identity = hidden_states[perturbed]
        if identity.shape[0]:
            if attn.group_norm is not None:
                identity = attn.group_norm(identity.transpose(1, 2)).transpose(1, 2)
            output[perturbed] = attn.to_out[1](attn.to_out[0](attn.to_v(identity)))
        if attn.residual_connection:
            output = output + residual
        return output / attn.rescale_output_factor


# Adapted from diffusers.models.attention_processor.PAGCFGIdentitySelfAttnProcessor2_0 (the original path)
def _attention(attn, hidden_states):
    """Scaled dot-product self-attention of 3-d ``hidden_states``, projected out, as the PAG processor's original
    path computes it."""
    import torch.nn.functional as F

    batch_size = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (tensor.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                         for tensor in (query, key, value))
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    attended = attended.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](attended))


# Adapted from diffusers.models.attention_processor.PAGCFGJointAttnProcessor2_0 (a mask of perturbed samples in place of the batch's chunks)
class MaskedJointPAGProcessor:
    """A PAG layer's joint attention (SD3's transformer) for a batch of any layout: the rows ``guidance.perturbed``
    leaves out attend as usual; in the rows it marks, each image token attends to itself and to the prompt's tokens
    only (the pipeline's perturbed path and its mask). Like the pipeline's processor, it applies no query/key norm."""

    def __init__(self, guidance):
        self.guidance = guidance

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        import torch

        if hidden_states.ndim != 3 or encoder_hidden_states is None or encoder_hidden_states.ndim != 3:
            raise ValueError("the batched joint PAG processor takes a transformer's 3-d image and prompt tokens")
        perturbed = self.guidance.perturbed
        parts = [(rows, _joint_attention(attn, hidden_states[rows], encoder_hidden_states[rows], identity=identity))
                 for rows, identity in ((~perturbed, False), (perturbed, True)) if bool(rows.any())]
        if len(parts) == 1:
            return parts[0][1]
        (first, (image, prompt)), (second, (image_2, prompt_2)) = parts
        batch = hidden_states.shape[0]
        image_out = image.new_empty((batch, *image.shape[1:]))
        prompt_out = prompt.new_empty((batch, *prompt.shape[1:]))
        image_out[first], image_out[second] = image, image_2
        prompt_out[first], prompt_out[second] = prompt, prompt_2
        return image_out, prompt_out


# Adapted from diffusers.models.attention_processor.PAGCFGJointAttnProcessor2_0 (its original and perturbed paths)
def _joint_attention(attn, hidden_states, encoder_hidden_states, *, identity: bool):
    """SD3's joint attention of image and prompt tokens, projected out, as the PAG processor's original path computes
    it; ``identity``: its perturbed path (image tokens see themselves and the prompt only)."""
    import torch
    import torch.nn.functional as F

    batch_size, tokens = hidden_states.shape[:2]
    query = torch.cat([attn.to_q(hidden_states), attn.add_q_proj(encoder_hidden_states)], dim=1)
    key = torch.cat([attn.to_k(hidden_states), attn.add_k_proj(encoder_hidden_states)], dim=1)
    value = torch.cat([attn.to_v(hidden_states), attn.add_v_proj(encoder_hidden_states)], dim=1)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (tensor.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                         for tensor in (query, key, value))
    mask = None
    if identity:
        mask = torch.zeros((query.size(2), query.size(2)), device=query.device, dtype=query.dtype)
        mask[:tokens, :tokens] = float("-inf")
        mask[:tokens, :tokens].fill_diagonal_(0)
        mask = mask.unsqueeze(0).unsqueeze(0)
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    attended = attended.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
    image, prompt = attended[:, :tokens], attended[:, tokens:]
    image = attn.to_out[1](attn.to_out[0](image))
    if not attn.context_pre_only:
        prompt = attn.to_add_out(prompt)
    return image, prompt


class PAGGuidance:
    """PAG, mixed into a family's conditioning (written before it): a perturbed sample after each cell's others (its
    positive prompt's fields, marked ``pag_perturbed``), the masked processor on the pipeline's PAG layers while a
    chunk denoises, and the pipeline's guidance."""

    def __init__(self, pipe, device, dtype, *, size=None):
        import torch

        super().__init__(pipe, device, dtype, size=size)
        parameters = call_parameters(pipe)
        self.pag_scale = parameters["pag_scale"].default
        self.pag_adaptive_scale = parameters["pag_adaptive_scale"].default
        self.marks = torch.zeros(1, device=device), torch.ones(1, device=device)  # a sample's ``pag_perturbed``
        self.perturbed = None  # the current call's rows that take the identity attention

    def branches(self, text: dict, cfg: bool) -> list[dict]:
        unmarked, marked = self.marks
        return ([{**fields, "pag_perturbed": unmarked} for fields in super().branches(text, cfg)]
                + [{**text["positive"], "pag_perturbed": marked}])

    # Adapted from diffusers.pipelines.pag.pag_utils.PAGMixin._apply_perturbed_attention_guidance
    def combined(self, cell, predictions, t, cfg: bool):
        scale = self._scale(t)
        if cfg:
            uncond, text, perturbed = predictions[0:1], predictions[1:2], predictions[2:3]
            return uncond + cell.guidance_scale * (text - uncond) + scale * (text - perturbed)
        text, perturbed = predictions[0:1], predictions[1:2]
        return text + scale * (text - perturbed)

    # Adapted from diffusers.pipelines.pag.pag_utils.PAGMixin._get_pag_scale
    def _scale(self, t):
        if not (self.pag_adaptive_scale > 0 and self.pag_scale > 0):
            return self.pag_scale
        signal_scale = self.pag_scale - self.pag_adaptive_scale * (1000 - t)
        return 0 if signal_scale < 0 else signal_scale

    @contextmanager
    def denoising(self):
        """The pipeline's PAG layers (``_set_pag_attn_processor``) take :class:`MaskedPAGProcessor` (a UNet) or
        :class:`MaskedJointPAGProcessor` (SD3's transformer) while the chunk denoises; the denoiser's processors are
        put back afterwards, as the pipeline puts them back."""
        unet = hasattr(self.pipe, "unet")
        denoiser = self.pipe.unet if unet else self.pipe.transformer
        original = denoiser.attn_processors
        self.pipe._set_pag_attn_processor(pag_applied_layers=self.pipe.pag_applied_layers,
                                          do_classifier_free_guidance=True)
        masked = (MaskedPAGProcessor if unet else MaskedJointPAGProcessor)(self)
        pag = self.pipe._pag_attn_processors[0]
        denoiser.set_attn_processor({name: masked if processor is pag else processor
                                     for name, processor in denoiser.attn_processors.items()})
        try:
            yield
        finally:
            denoiser.set_attn_processor(original)

    def predict(self, inputs, t, fields: dict):
        self.perturbed = fields["pag_perturbed"] > 0.5
        return super().predict(inputs, t, {name: value for name, value in fields.items() if name != "pag_perturbed"})

    def probe_fields(self, size) -> dict:
        return {**super().probe_fields(size), "pag_perturbed": self.marks[0]}
