"""Perturbed-attention guidance (PAG) in the batched engine, mixed into Stable Diffusion's and SDXL's conditioning.

A PAG pipeline sends each cell's samples through its UNet as one batch laid out by its attention processors: under
classifier-free guidance ``[negative, positive, perturbed]`` (``chunk(3)``), without it ``[positive, perturbed]``;
the perturbed sample's self-attention in the PAG layers is replaced by the identity (its value projection). The
batched engine mixes many cells in one call, so its processor is told per call which samples are perturbed
(:class:`MaskedPAGProcessor`) and computes each row as the pipeline's processor computes it. The guidance is the
pipeline's ``_apply_perturbed_attention_guidance`` with its default ``pag_scale`` and ``pag_adaptive_scale``.

>>> from img2img_lab.models.families.stable_diffusion import StableDiffusionFamily
>>> StableDiffusionFamily(StableDiffusionFamily.tiny_pipelines["sd-pag"]()).batched_conditioning()[1]
'StableDiffusionPAGImg2ImgPipeline'
"""

from __future__ import annotations

from contextlib import contextmanager

from img2img_lab.models.families.base import call_parameters


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
        """The pipeline's PAG layers (``_set_pag_attn_processor``) take :class:`MaskedPAGProcessor` while the chunk
        denoises; the UNet's processors are put back afterwards, as the pipeline puts them back."""
        unet = self.pipe.unet
        original = unet.attn_processors
        self.pipe._set_pag_attn_processor(pag_applied_layers=self.pipe.pag_applied_layers,
                                          do_classifier_free_guidance=True)
        pag, masked = self.pipe._pag_attn_processors[0], MaskedPAGProcessor(self)
        unet.set_attn_processor({name: masked if processor is pag else processor
                                 for name, processor in unet.attn_processors.items()})
        try:
            yield
        finally:
            unet.set_attn_processor(original)

    def predict(self, inputs, t, fields: dict):
        self.perturbed = fields["pag_perturbed"] > 0.5
        return super().predict(inputs, t, {name: value for name, value in fields.items() if name != "pag_perturbed"})

    def probe_fields(self, size) -> dict:
        return {**super().probe_fields(size), "pag_perturbed": self.marks[0]}
