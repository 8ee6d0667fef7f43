"""ControlNet in the batched loop (Stable Diffusion 1.x/2.x and SDXL; FLUX.1 borrows its scale at each step).

:class:`ControlNetGuidance` is a mixin for a family's batched conditioning: each sample carries its control image
(``prepare_control_image``; one per ControlNet of a ``MultiControlNetModel``, in its order) and its conditioning scale
at each of its steps (``controlnet_conditioning_scale × controlnet_keep[i]``, the keep counted over the cell's own
timesteps), as a per-sample tensor the ControlNet multiplies its residuals by; the ControlNet runs on the samples, the
UNet adds its residuals. Several ControlNets each take the cell's one scale and keep (the swept values are scalars,
which the pipelines repeat per ControlNet) and their residuals add up, as ``MultiControlNetModel`` adds them.

A union ControlNet (SDXL's ControlNet++) takes any number of control images, each with its mode
(:class:`UnionControlNetGuidance`).

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

from img2img_lab.plan.axes import control_mode_list


def cell_control_modes(cell) -> list[int]:
    """A cell's union ControlNet modes, one per control image (a memory probe's cell has none: mode 0).

    >>> from types import SimpleNamespace
    >>> cell_control_modes(SimpleNamespace(control_mode="3,1")), cell_control_modes(SimpleNamespace())
    ([3, 1], [0])
    """
    return control_mode_list(getattr(cell, "control_mode", None) or "0")


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

    def condition_fields(self, cell, condition: dict | None) -> dict:
        images = condition["control_image"] if self.nets > 1 else [condition["control_image"]]
        return {name: self._prepared(image) for name, image in zip(self._cond_names(), images)}

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.prepare_control_image
    def _prepared(self, image):
        """A control image as the ControlNet reads it (prepared once per image)."""
        import torch

        prepared = self._control_images.get(id(image))
        if prepared is None:
            width, height = self.size
            pixels = self.pipe.control_image_processor.preprocess(image, height=height, width=width)
            prepared = self._control_images[id(image)] = pixels.to(dtype=torch.float32).to(
                device=self.device, dtype=self.pipe.controlnet.dtype)
        return prepared

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
        down, mid = self._residuals(inputs, t, fields)
        return self.pipe.unet(unet_inputs, t, encoder_hidden_states=fields["encoder_hidden_states"],
                              down_block_additional_residuals=down, mid_block_additional_residual=mid,
                              return_dict=False, **self._added(fields))[0]

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_img2img.StableDiffusionControlNetImg2ImgPipeline.__call__ (guess mode: the ControlNet on the conditional batch only, zeros for the rest)
    def _residuals(self, inputs, t, fields: dict):
        """The ControlNet(s)' residuals for every sample: in guess mode computed for the samples whose
        ``control_weight`` is 1 only, zeros for the others (as the pipeline infers the conditional batch alone)."""
        rows = slice(None)
        if "control_weight" in fields and not bool(fields["control_weight"].all()):
            rows = fields["control_weight"].flatten().nonzero().flatten()
            if not len(rows):  # negative samples only: no residuals (the UNet adds nothing, as it adds zeros)
                return None, None
        picked = {name: fields[name][rows] for name in ("encoder_hidden_states", "conditioning_scale",
                                                        *self._picked_names(fields), *self.added_fields)}
        down, mid = self._run_controlnet(inputs[rows], t, picked)
        return (down, mid) if isinstance(rows, slice) else gathered([(rows, (down, mid))], inputs.shape[0])

    def _picked_names(self, fields: dict) -> tuple[str, ...]:
        """The per-sample fields the ControlNet reads besides the prompt's: the control images."""
        return tuple(self._cond_names())

    def _added(self, picked: dict) -> dict:
        return {"added_cond_kwargs": {name: picked[name] for name in self.added_fields}} if self.added_fields else {}

    def _run_controlnet(self, inputs, t, picked: dict):
        """``(down, mid)`` residuals of the ControlNet(s) on ``inputs`` with the ``picked`` samples' fields."""
        conds, scale = [picked[name] for name in self._cond_names()], picked["conditioning_scale"]
        return self.pipe.controlnet(inputs, t, encoder_hidden_states=picked["encoder_hidden_states"],
                                    controlnet_cond=conds[0] if self.nets == 1 else conds,
                                    conditioning_scale=scale if self.nets == 1 else [scale] * self.nets,
                                    guess_mode=False, return_dict=False, **self._added(picked))


class UnionControlNetGuidance(ControlNetGuidance):
    """SDXL's union ControlNet (ControlNet++, ``ControlNetUnionModel``) in the batched loop: any number of control
    images, each read as the mode the cell's ``control_mode`` gives it. Each sample carries the ControlNet's
    ``control_type`` (its modes as a multi-hot row) and the modes themselves; the cells of one batch share their modes
    (the axis is not batchable). With one image the per-sample scale multiplies the residuals; with several, the
    ControlNet mixes the scaled maps inside, so it runs once per distinct scale among the samples (once while no cell
    is outside its control guidance window)."""

    def sample_fields(self, cell) -> dict:
        import torch

        modes = torch.tensor(cell_control_modes(cell), device=self.device)
        kinds = torch.zeros(1, self.pipe.controlnet.config.num_control_type, device=self.device, dtype=self.dtype)
        return {**super().sample_fields(cell), "control_type": kinds.index_fill_(1, modes, 1.0),
                "control_mode": modes[None]}

    def _cond_names(self) -> list[str]:
        return ["controlnet_cond_0"]  # a memory probe's one map (a cell has one per control image)

    def condition_fields(self, cell, condition: dict | None) -> dict:
        images = condition["control_image"]
        return {f"controlnet_cond_{index}": self._prepared(image)
                for index, image in enumerate(images if isinstance(images, list) else [images])}

    def _picked_names(self, fields: dict) -> tuple[str, ...]:
        images = fields["control_mode"].shape[1]
        return ("control_type", "control_mode", *(f"controlnet_cond_{index}" for index in range(images)))

    # Adapted from diffusers.pipelines.controlnet.pipeline_controlnet_union_sd_xl_img2img.StableDiffusionXLControlNetUnionImg2ImgPipeline.__call__ (control_type, then the ControlNet with each map, its mode and its scale)
    def _run_controlnet(self, inputs, t, picked: dict):
        import torch

        modes, scale = picked["control_mode"][0].tolist(), picked["conditioning_scale"]
        if len(modes) == 1:
            return self._union_call(inputs, t, picked, modes, [scale])
        values, parts = scale.flatten().tolist(), []
        for value in sorted(set(values)):  # several maps: the scale acts inside, one float per call
            rows = torch.tensor([row for row, each in enumerate(values) if each == value], device=inputs.device)
            some = {name: field[rows] for name, field in picked.items()}
            parts.append((rows, self._union_call(inputs[rows], t, some, modes, [value] * len(modes))))
        return gathered(parts, inputs.shape[0])

    def _union_call(self, inputs, t, picked: dict, modes: list[int], scales: list):
        conds = [picked[f"controlnet_cond_{index}"] for index in range(len(modes))]
        return self.pipe.controlnet(inputs, t, encoder_hidden_states=picked["encoder_hidden_states"],
                                    controlnet_cond=conds, control_type=picked["control_type"],
                                    control_type_idx=modes, conditioning_scale=scales, guess_mode=False,
                                    return_dict=False, **self._added(picked))


def gathered(parts: list, count: int):
    """``(down, mid)`` residuals for ``count`` samples from ``[(rows, (down, mid)), ...]`` of some of them (zeros for
    the samples no part holds).

    >>> import torch
    >>> down, mid = gathered([(torch.tensor([1]), ([torch.ones(1, 2)], torch.ones(1, 1)))], 3)
    >>> down[0].tolist(), mid.flatten().tolist()
    ([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], [0.0, 1.0, 0.0])
    """
    import torch

    def spread(rows_and_residuals):
        first = rows_and_residuals[0][1]
        whole = torch.zeros((count, *first.shape[1:]), dtype=first.dtype, device=first.device)
        for rows, residual in rows_and_residuals:
            whole = whole.index_copy(0, rows, residual)
        return whole

    down = [spread([(rows, part[0][level]) for rows, part in parts]) for level in range(len(parts[0][1][0]))]
    return down, spread([(rows, part[1]) for rows, part in parts])
