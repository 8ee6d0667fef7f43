"""ControlNet in the batched loop (Stable Diffusion 1.x/2.x and SDXL; FLUX.1 borrows its scale at each step).

:class:`ControlNetGuidance` is a mixin for a family's batched conditioning: each sample carries its control image
(``prepare_control_image``; one per ControlNet of a ``MultiControlNetModel``, in its order) and its conditioning scale
at each of its steps (``controlnet_conditioning_scale × controlnet_keep[i]``, the keep counted over the cell's own
timesteps), as a per-sample tensor the ControlNet multiplies its residuals by; the ControlNet runs on the samples, the
UNet adds its residuals. Several ControlNets each take the cell's one scale and keep (the swept values are scalars,
which the pipelines repeat per ControlNet) and their residuals add up, as ``MultiControlNetModel`` adds them.

A pooled ControlNet (``global_pool_conditions``, shuffle-style) puts SD's and SDXL's ControlNet img2img and SD's
ControlNet inpainting in guess mode: a CFG cell's negative sample takes no residuals. Each sample then carries a
``control_weight`` (0 or 1); the ControlNet runs on the samples of weight 1 and the others take zeros.

>>> from img2img_lab.models.families.stable_diffusion import ControlNetConditioning, StableDiffusionFamily
>>> pipe = StableDiffusionFamily.tiny_pipelines["sd-controlnet"]()
>>> conditioner = ControlNetConditioning(pipe, pipe.device, pipe.unet.dtype, size=(32, 32))
>>> conditioner.nets, conditioner.guess_mode
(1, False)
"""

from __future__ import annotations

import inspect


class ControlNetGuidance:
    """The ControlNet's part of a batched conditioning (see the module doc); mixed in before the family's own."""

    scale_shape = (1, 1, 1, 1)  # one sample's conditioning scale, broadcast over its residuals
    #: Whether the pipeline runs a pooled ControlNet (``global_pool_conditions``, shuffle-style) in guess mode: the
    #: negative sample then takes no residuals (the PAG pipelines and SDXL's ControlNet inpainting never do).
    pooled_guess_mode = True

    def __init__(self, pipe, device, dtype, *, size=None):
        import torch

        super().__init__(pipe, device, dtype, size=size)
        self._defaults = {name: parameter.default
                          for name, parameter in inspect.signature(type(pipe).__call__).parameters.items()}
        self._control_images: dict[int, object] = {}
        nets = list(getattr(pipe.controlnet, "nets", None) or [pipe.controlnet])
        self.nets = len(nets)  # a MultiControlNetModel's, or 1
        self.guess_mode = self.pooled_guess_mode and bool(nets[0].config.get("global_pool_conditions"))
        self._weights = [torch.full(self.scale_shape, on, device=device, dtype=dtype) for on in (0.0, 1.0)]

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.__call__ (guess mode: zeros for the unconditional batch)
    def branches(self, text: dict, cfg: bool) -> list[dict]:
        """In guess mode each sample carries a ``control_weight``: 0 for a CFG cell's negative sample, else 1 (one row
        of the batch's weights, which pick the samples the ControlNet runs on)."""
        branches = super().branches(text, cfg)
        if not self.guess_mode:
            return branches
        return [{**fields, "control_weight": self._weights[int(not (cfg and index == 0))]}
                for index, fields in enumerate(branches)]

    def _setting(self, cell, name: str) -> float:
        value = getattr(cell, name, None)
        return float(self._defaults[name] if value is None else value)

    def _cond_names(self) -> list[str]:
        """The per-sample fields of the control images: ``controlnet_cond``, or one per ControlNet."""
        return ["controlnet_cond"] if self.nets == 1 else [f"controlnet_cond_{index}" for index in range(self.nets)]

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.prepare_control_image
    def condition_fields(self, cell, condition: dict | None) -> dict:
        import torch

        images = condition["control_image"] if self.nets > 1 else [condition["control_image"]]
        fields = {}
        for name, image in zip(self._cond_names(), images):
            prepared = self._control_images.get(id(image))
            if prepared is None:
                width, height = self.size
                pixels = self.pipe.control_image_processor.preprocess(image, height=height, width=width)
                prepared = self._control_images[id(image)] = pixels.to(dtype=torch.float32).to(
                    device=self.device, dtype=self.pipe.controlnet.dtype)
            fields[name] = prepared
        return fields

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.__call__ (controlnet_keep, cond_scale)
    def step_fields(self, cell, step: int, steps: int) -> dict:
        import torch

        start, end = self._setting(cell, "control_guidance_start"), self._setting(cell, "control_guidance_end")
        keep = 1.0 - float(step / steps < start or (step + 1) / steps > end)
        scale = self._setting(cell, "controlnet_conditioning_scale") * keep
        return {"conditioning_scale": torch.full(self.scale_shape, scale, device=self.device, dtype=self.dtype)}

    def probe_fields(self, size) -> dict:
        import torch

        blank = torch.zeros(1, 3, size[1], size[0], device=self.device, dtype=self.pipe.controlnet.dtype)
        return {**{name: blank for name in self._cond_names()},
                "conditioning_scale": torch.ones(1, 1, 1, 1, device=self.device, dtype=self.dtype)}

    def predict(self, inputs, t, fields: dict):
        return self.controlled(inputs, t, fields, unet_inputs=inputs)

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.__call__ (the ControlNet(s), then the UNet with their residuals)
    def controlled(self, inputs, t, fields: dict, *, unet_inputs):
        """The ControlNet(s) on ``inputs``, then the UNet on ``unet_inputs`` (an inpainting UNet's 9 channels) with
        their residuals."""
        extra = {"added_cond_kwargs": {name: fields[name] for name in self.added_fields}} if self.added_fields else {}
        down, mid = self._residuals(inputs, t, fields)
        return self.pipe.unet(unet_inputs, t, encoder_hidden_states=fields["encoder_hidden_states"],
                              down_block_additional_residuals=down, mid_block_additional_residual=mid,
                              return_dict=False, **extra)[0]

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.__call__ (guess mode: the ControlNet on the conditional batch only, zeros for the rest)
    def _residuals(self, inputs, t, fields: dict):
        """The ControlNet(s)' residuals for every sample: in guess mode computed for the samples whose
        ``control_weight`` is 1 only, zeros for the others (as the pipeline infers the conditional batch alone)."""
        import torch

        rows = slice(None)
        if "control_weight" in fields and not bool(fields["control_weight"].all()):
            rows = fields["control_weight"].flatten().nonzero().flatten()
            if not len(rows):  # negative samples only: no residuals (the UNet adds nothing, as it adds zeros)
                return None, None
        picked = {name: fields[name][rows] for name in ("encoder_hidden_states", "conditioning_scale",
                                                        *self._cond_names(), *self.added_fields)}
        extra = {"added_cond_kwargs": {name: picked[name] for name in self.added_fields}} if self.added_fields else {}
        conds, scale = [picked[name] for name in self._cond_names()], picked["conditioning_scale"]
        down, mid = self.pipe.controlnet(inputs[rows], t, encoder_hidden_states=picked["encoder_hidden_states"],
                                         controlnet_cond=conds[0] if self.nets == 1 else conds,
                                         conditioning_scale=scale if self.nets == 1 else [scale] * self.nets,
                                         guess_mode=False, return_dict=False, **extra)
        if isinstance(rows, slice):
            return down, mid

        def spread(residual):
            return torch.zeros((inputs.shape[0], *residual.shape[1:]), dtype=residual.dtype,
                               device=residual.device).index_copy(0, rows, residual)

        return [spread(residual) for residual in down], spread(mid)
