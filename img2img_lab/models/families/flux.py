"""FLUX.1: img2img, inpainting, Control (channel-concatenated control latents) and ControlNet pipelines.

The FLUX rule: ``sigmas = linspace(1, 1/N, N)`` and ``mu`` from the packed token count
(``(H // vae // 2) · (W // vae // 2)``), then the SD3 ``get_timesteps`` (``N·s``, no ``int``); sizes are multiples
of twice the VAE factor (latents are packed in 2x2 patches). FLUX.1-dev embeds the guidance scale, schnell ignores
it. :class:`TrueCFGFluxFamily` is the same rule with true classifier-free guidance (Chroma, Qwen-Image, Z-Image).

>>> FluxFamily(FluxFamily.tiny_pipelines["flux-schnell"]()).ignored_arguments()["guidance_scale"]
'this FLUX.1 transformer has no guidance embedding (schnell-style)'
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family, calculate_shift, call_parameters, sample_latent
from img2img_lab.models.families.flow_inpaint import FlowInpaint
from img2img_lab.models.families.sd3 import SD3Conditioning, call_defaults
from img2img_lab.models.families.controlnet import ControlNetGuidance, cell_control_modes
from img2img_lab.models.families.tiny_parts import as_class, make_tiny_flux, tiny_flux_control, tiny_flux_controlnet


class FluxConditioning(SD3Conditioning):
    """What the batched loop needs of FLUX.1, done as ``FluxImg2ImgPipeline.__call__`` does it: CLIP's pooled and T5's
    sequence embedding (no negative branch: true CFG is not swept), the guidance scale as a per-sample embedding
    (dev; schnell has none), latents packed in 2x2 patches with their position ids, the transformer's timestep in
    thousandths. The VAE's shift and scale and the flow-matching noise are SD3's (FLUX copies them).

    >>> flux = FluxFamily.tiny_pipelines["flux-dev"]()
    >>> conditioner = FluxConditioning(flux, flux.device, flux.transformer.dtype, size=(32, 32))
    >>> sorted(conditioner.encode([("a red square", "")], (32, 32))[("a red square", "")])
    ['positive']
    >>> tuple(conditioner.blank_latents((32, 32)).shape)   # 16x16 latents (VAE factor 2) in 8x8 patches of 2x2x4
    (1, 64, 16)
    """

    # Adapted from diffusers.pipelines.flux.pipeline_flux_img2img.FluxImg2ImgPipeline.__call__ (step 3: encode_prompt; the latent image ids of step 5)
    def encode(self, keys, size) -> dict:
        import torch

        length = call_defaults(self.pipe)["max_sequence_length"]
        conditioning = {}
        with torch.no_grad():
            for prompt, _negative in keys:
                embeds, pooled, self.text_ids = self.pipe.encode_prompt(
                    prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
                    max_sequence_length=length)
                conditioning[(prompt, _negative)] = {"positive": {"encoder_hidden_states": embeds,
                                                                  "pooled_projections": pooled}}
        self.image_ids = self.latent_image_ids(size, embeds.dtype)
        return conditioning

    def _latent_side(self, pixels: int) -> int:
        return 2 * (int(pixels) // (self.pipe.vae_scale_factor * 2))

    def _pack(self, latents):
        """One sample's latents in 2x2 patches (``_pack_latents``): [1, C, H, W], or Qwen-Image's [1, 1, C, H, W]."""
        *_, channels, height, width = latents.shape
        return self.pipe._pack_latents(latents, 1, channels, height, width)

    def latent_image_ids(self, size, dtype):
        """The packed latents' position ids at ``size`` (``_prepare_latent_image_ids``)."""
        height, width = self._latent_side(size[1]), self._latent_side(size[0])
        return self.pipe._prepare_latent_image_ids(1, height // 2, width // 2, self.device, dtype)

    def uses_cfg(self, cell) -> bool:
        return False  # FLUX.1 embeds its guidance; true CFG (true_cfg_scale) is not swept

    # Adapted from diffusers.pipelines.flux.pipeline_flux_img2img.FluxImg2ImgPipeline.__call__ (handle guidance)
    def sample_fields(self, cell) -> dict:
        import torch

        if not self.pipe.transformer.config.guidance_embeds:
            return {}
        return {"guidance": torch.full([1], cell.guidance_scale, device=self.device, dtype=torch.float32)}

    # Adapted from diffusers.pipelines.flux.pipeline_flux_img2img.FluxImg2ImgPipeline.prepare_latents (scale_noise, then _pack_latents)
    def noised(self, scheduler, latents, noise, timestep):
        noised = scheduler.scale_noise(latents, timestep, noise)
        _, channels, height, width = noised.shape
        return self.pipe._pack_latents(noised, 1, channels, height, width)

    # Adapted from diffusers.pipelines.flux.pipeline_flux_img2img.FluxImg2ImgPipeline.__call__ (step 6: the transformer call)
    def predict(self, inputs, t, fields: dict):
        timestep = t.expand(inputs.shape[0]).to(inputs.dtype)
        return self.pipe.transformer(hidden_states=inputs, timestep=timestep / 1000, guidance=fields.get("guidance"),
                                     pooled_projections=fields["pooled_projections"],
                                     encoder_hidden_states=fields["encoder_hidden_states"], txt_ids=self.text_ids,
                                     img_ids=self.image_ids, joint_attention_kwargs={}, return_dict=False)[0]

    def blank_latents(self, size):
        import torch

        channels = self.pipe.transformer.config.in_channels // 4
        zeros = torch.zeros(1, channels, self._latent_side(size[1]), self._latent_side(size[0]), device=self.device,
                            dtype=self.dtype)
        return self.pipe._pack_latents(zeros, 1, channels, zeros.shape[2], zeros.shape[3])

    def decode(self, latents, conditioning_dtype):
        width, height = self.size
        return super().decode(self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor),
                              conditioning_dtype)


class FluxInpaintConditioning(FlowInpaint, FluxConditioning):
    """``FluxInpaintPipeline`` (16-channel transformer, no crop): FLUX.1's img2img with :class:`FlowInpaint`'s
    packed mask and blend.

    >>> flux = FluxFamily.tiny_pipelines["flux-inpaint"]()
    >>> FluxFamily(flux).batched_conditioning()
    (<class 'img2img_lab.models.families.flux.FluxInpaintConditioning'>, 'FluxInpaintPipeline')
    """


class FluxControlConditioning(FluxConditioning):
    """``FluxControlImg2ImgPipeline`` (FLUX.1 Canny / Depth): FLUX.1's img2img with the control image's packed VAE
    latents concatenated to the latents on the channel axis at every call. The control latents are sampled with the
    cell's generator before the source's (the pipeline encodes the control image first).

    >>> FluxFamily(FluxFamily.tiny_pipelines["flux-control"]()).batched_conditioning()[1]
    'FluxControlImg2ImgPipeline'
    """

    def __init__(self, pipe, device, dtype, *, size=None):
        super().__init__(pipe, device, dtype, size=size)
        self._controls: dict[int, object] = {}

    # Adapted from diffusers.pipelines.flux.pipeline_flux_control_img2img.FluxControlImg2ImgPipeline.__call__ (step 5: prepare_image, the control image's VAE sample, packed)
    def _control_latents(self, image, generator):
        import torch

        if id(image) not in self._controls:
            with torch.no_grad():
                self._controls[id(image)] = self.pipe.vae.encode(self._control_pixels(image)).latent_dist
        config = self.pipe.vae.config
        return self._pack((sample_latent(self._controls[id(image)], generator) - config.shift_factor)
                          * config.scaling_factor)

    def _control_pixels(self, image):
        width, height = self.size
        return self.pipe.prepare_image(image=image, width=width, height=height, batch_size=1, num_images_per_prompt=1,
                                       device=self.device, dtype=self.pipe.vae.dtype)

    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        control = self._control_latents(condition["control_image"], generator)  # drawn first, as the pipeline does
        latents, fields, state = super().start_latents(scheduler, timesteps, distribution, generator, cell=cell,
                                                       condition=condition, source=source)
        return latents, {**fields, "control_latents": control}, state

    def probe_fields(self, size) -> dict:
        return {"control_latents": self.blank_latents(size)}

    def blank_latents(self, size):
        import torch

        channels = self.pipe.transformer.config.in_channels // 8  # half the transformer's input is the control
        zeros = torch.zeros(1, channels, self._latent_side(size[1]), self._latent_side(size[0]), device=self.device,
                            dtype=self.dtype)
        return self._pack(zeros)

    # Adapted from diffusers.pipelines.flux.pipeline_flux_control_img2img.FluxControlImg2ImgPipeline.__call__ (step 6: torch.cat([latents, control_image], dim=2))
    def predict(self, inputs, t, fields: dict):
        import torch

        return super().predict(torch.cat([inputs, fields["control_latents"]], dim=2), t, fields)


class FluxControlNetConditioning(FluxControlConditioning):
    """``FluxControlNetImg2ImgPipeline``: the control image's latents sampled first, as FLUX.1 Control does, fed to
    the ControlNet whose residuals the transformer adds; each sample's conditioning scale at each of its own steps
    (``controlnet_conditioning_scale × controlnet_keep[i]``) and its guidance embedding where the ControlNet takes one.
    An XLabs-style ControlNet (an input hint block) reads the control image's pixels instead, nothing drawn, and its
    residuals repeat over the transformer's blocks (``controlnet_blocks_repeat``). Several single-mode ControlNets
    (``FluxMultiControlNetModel``) take a control image each, drawn in their order, and the cell's scale each; their
    residuals add up.

    >>> FluxFamily(FluxFamily.tiny_pipelines["flux-controlnet"]()).batched_conditioning()[1]
    'FluxControlNetImg2ImgPipeline'
    """

    blank_latents = FluxConditioning.blank_latents  # the transformer reads the latents alone
    scale_shape = (1, 1, 1)  # one sample's scale over its residuals' tokens and channels
    _setting = ControlNetGuidance._setting
    step_fields = ControlNetGuidance.step_fields  # the scale at each of the cell's own steps, as SD's

    def __init__(self, pipe, device, dtype, *, size=None):
        super().__init__(pipe, device, dtype, size=size)
        self._defaults = call_defaults(pipe)
        nets = getattr(pipe.controlnet, "nets", None) or [pipe.controlnet]  # a FluxMultiControlNetModel's, or one
        self._first_net, self.nets = nets[0], len(nets)  # the pipeline reads the first one's settings

    def _cond_names(self) -> list[str]:
        """The per-sample fields of the control images: ``control_latents``, or one per ControlNet."""
        return ["control_latents"] if self.nets == 1 else [f"control_latents_{index}" for index in range(self.nets)]

    # Adapted from diffusers.pipelines.flux.pipeline_flux_controlnet_image_to_image.FluxControlNetImg2ImgPipeline.__call__ (step 3: each ControlNet's control image in its order)
    def control_fields(self, control, generator) -> dict:
        """Each control image's latents (an XLabs ControlNet: its pixels), drawn in the ControlNets' order."""
        images = control if self.nets > 1 else [control]
        return {name: self._control_latents(image, generator) for name, image in zip(self._cond_names(), images)}

    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        controls = self.control_fields(condition["control_image"], generator)  # drawn first, as the pipeline does
        latents, fields, state = FluxConditioning.start_latents(self, scheduler, timesteps, distribution, generator,
                                                                cell=cell, condition=condition, source=source)
        return latents, {**fields, **controls}, state

    def sample_fields(self, cell) -> dict:
        import torch

        fields = super().sample_fields(cell)
        if self._first_net.config.guidance_embeds:
            fields["controlnet_guidance"] = torch.full([1], cell.guidance_scale, device=self.device,
                                                       dtype=torch.float32)
        if self._first_net.union:  # a union ControlNet's mode per control image, per sample
            fields["controlnet_mode"] = torch.tensor([cell_control_modes(cell)], device=self.device)
        return fields

    @property
    def hint_block(self) -> bool:
        """Whether the ControlNet is XLabs-style: its input hint block reads the control image's pixels."""
        return self._first_net.input_hint_block is not None

    # Adapted from diffusers.pipelines.flux.pipeline_flux_controlnet_image_to_image.FluxControlNetImg2ImgPipeline.__call__ (step 3: the control image, encoded only without an input hint block)
    def _control_latents(self, image, generator):
        if not self.hint_block:
            return super()._control_latents(image, generator)
        if id(image) not in self._controls:
            self._controls[id(image)] = self._control_pixels(image)
        return self._controls[id(image)]

    def probe_fields(self, size) -> dict:
        import torch

        control = (torch.zeros(1, 3, size[1], size[0], device=self.device, dtype=self.pipe.vae.dtype)
                   if self.hint_block else self.blank_latents(size))
        return {**{name: control for name in self._cond_names()},
                "conditioning_scale": torch.ones(1, 1, 1, device=self.device, dtype=self.dtype)}

    # Adapted from diffusers.pipelines.flux.pipeline_flux_controlnet_image_to_image.FluxControlNetImg2ImgPipeline.__call__ (the ControlNet(s), then the transformer with their residuals; a single-mode ControlNet's control_mode is -1, a union one's each sample's)
    def predict(self, inputs, t, fields: dict):
        import torch

        timestep = t.expand(inputs.shape[0]).to(inputs.dtype) / 1000
        common = {"pooled_projections": fields["pooled_projections"], "txt_ids": self.text_ids,
                  "encoder_hidden_states": fields["encoder_hidden_states"], "img_ids": self.image_ids,
                  "joint_attention_kwargs": {}, "return_dict": False}
        conds, scale, modes = ([fields[name] for name in self._cond_names()], fields["conditioning_scale"],
                               fields.get("controlnet_mode"))
        several = {"controlnet_cond": conds, "conditioning_scale": [scale] * self.nets,
                   "controlnet_mode": torch.full((self.nets, 1), -1, dtype=torch.long, device=inputs.device)
                   if modes is None else modes.T}  # each net's row: (samples,), read as [:, None]
        one = {"controlnet_cond": conds[0], "conditioning_scale": scale, "controlnet_mode": modes}
        blocks, singles = self.pipe.controlnet(hidden_states=inputs, timestep=timestep,
                                               guidance=fields.get("controlnet_guidance"),
                                               **(several if self.nets > 1 else one), **common)
        return self.pipe.transformer(hidden_states=inputs, timestep=timestep, guidance=fields.get("guidance"),
                                     controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                                     controlnet_blocks_repeat=self.hint_block, **common)[0]


class FluxControlInpaintConditioning(FlowInpaint, FluxControlConditioning):
    """``FluxControlInpaintPipeline``: FLUX.1 Control's concatenated control latents with :class:`FlowInpaint`'s
    blend, the mask repeated over the VAE's channels. Its draws come in its own order: the masked source's latents
    first (``prepare_mask_latents`` runs before the rest; the transformer never reads them), then the control
    image's, the source's and the noise.

    >>> FluxFamily(FluxFamily.tiny_pipelines["flux-control-inpaint"]()).batched_conditioning()[1]
    'FluxControlInpaintPipeline'
    """

    def _mask_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    # Adapted from diffusers.pipelines.flux.pipeline_flux_control_inpaint.FluxControlInpaintPipeline.__call__ (steps 3 and 5: prepare_mask_latents, the control image, prepare_latents)
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        from diffusers.utils.torch_utils import randn_tensor

        mask, masked_distribution = self._mask_inputs(source, condition["mask_image"])
        self.initial_latents(masked_distribution, generator)  # drawn first, then unused
        control = self._control_latents(condition["control_image"], generator)
        initial = self.initial_latents(distribution, generator)
        noise = randn_tensor(initial.shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = self._pack(scheduler.scale_noise(initial, timesteps[:1], noise))
        state = {"image_latents": self._pack(initial), "noise": self._pack(noise), "mask": mask}
        return latents, {"control_latents": control}, state


class FluxControlNetInpaintConditioning(FlowInpaint, FluxControlNetConditioning):
    """``FluxControlNetInpaintPipeline``: FLUX.1 ControlNet's residuals (one ControlNet or several) with
    :class:`FlowInpaint`'s blend. The control image's latents are drawn first, then the source's, the noise and the
    masked source's (steps 5, 7 and 8 of its ``__call__``).

    >>> FluxFamily(FluxFamily.tiny_pipelines["flux-controlnet-inpaint"]()).batched_conditioning()[1]
    'FluxControlNetInpaintPipeline'
    """

    # Adapted from diffusers.pipelines.flux.pipeline_flux_controlnet_inpainting.FluxControlNetInpaintPipeline.__call__ (steps 5, 7 and 8: the control image, prepare_latents, prepare_mask_latents)
    def start_latents(self, scheduler, timesteps, distribution, generator, *, cell, condition, source):
        controls = self.control_fields(condition["control_image"], generator)  # drawn first
        latents, fields, state = FlowInpaint.start_latents(self, scheduler, timesteps, distribution, generator,
                                                           cell=cell, condition=condition, source=source)
        return latents, {**fields, **controls}, state


class FluxFamily(Family):
    name, label = "flux", "FLUX.1"
    pipelines = {
        "img2img": ("FluxImg2ImgPipeline",),
        "inpaint": ("FluxInpaintPipeline",),
        "controlnet-img2img": ("FluxControlImg2ImgPipeline", "FluxControlNetImg2ImgPipeline"),
        "controlnet-inpaint": ("FluxControlInpaintPipeline", "FluxControlNetInpaintPipeline"),
    }
    text_to_image = {"FluxPipeline": "FluxImg2ImgPipeline", "FluxControlPipeline": "FluxControlImg2ImgPipeline",
                     "FluxControlNetPipeline": "FluxControlNetImg2ImgPipeline"}
    no_strength = {"FluxKontextPipeline": "edits from a reference image and always starts from noise: it has no "
                                          "strength dial",
                   "FluxKontextInpaintPipeline": "edits from a reference image and always starts from noise: it has "
                                                 "no strength dial"}
    scheduler_configs = ("flux-dev", "flux-schnell")
    real_size = ("flux-dev-reduced",)
    tiny_pipelines = {
        "flux-dev": make_tiny_flux,  # guidance embedding; flow matching, dynamic shifting (FLUX.1-dev)
        "flux-schnell": lambda: make_tiny_flux(guidance=False),  # no guidance; constant shift 1 (schnell)
        "flux-inpaint": lambda: as_class(make_tiny_flux(), "FluxInpaintPipeline"),
        "flux-control": lambda: tiny_flux_control("FluxControlImg2ImgPipeline"),
        "flux-control-inpaint": lambda: tiny_flux_control("FluxControlInpaintPipeline"),
        "flux-controlnet": lambda: as_class(make_tiny_flux(), "FluxControlNetImg2ImgPipeline",
                                            controlnet=tiny_flux_controlnet()),
        "flux-controlnet-inpaint": lambda: as_class(make_tiny_flux(), "FluxControlNetInpaintPipeline",
                                                    controlnet=tiny_flux_controlnet()),
        "flux-kontext": lambda: as_class(make_tiny_flux(), "FluxKontextPipeline"),  # no strength: refused
    }
    schedulers = ("default",)
    counts_inpaint_channels = False  # the transformer always blends latents
    batched_classes = {"FluxImg2ImgPipeline": FluxConditioning, "FluxInpaintPipeline": FluxInpaintConditioning,
                       "FluxControlImg2ImgPipeline": FluxControlConditioning,
                       "FluxControlInpaintPipeline": FluxControlInpaintConditioning,
                       "FluxControlNetImg2ImgPipeline": FluxControlNetConditioning,
                       "FluxControlNetInpaintPipeline": FluxControlNetInpaintConditioning}

    # Adapted from diffusers.pipelines.flux.pipeline_flux_controlnet_image_to_image.FluxControlNetImg2ImgPipeline.__call__ (step 3: control_mode_ per ControlNet; the loop zips the scales with each ControlNet's keep)
    def control_arguments(self, arguments: dict) -> dict:
        """A ``FluxMultiControlNetModel`` takes a ``control_mode`` and a conditioning scale per ControlNet (diffusers
        fails without them): a single-mode ControlNet ignores its mode (``None``), a union one takes the cell's
        ``control_modes`` value, and each takes the cell's scale.

        >>> from img2img_lab.models.families.tiny_parts import with_two_flux_controlnets
        >>> several = FluxFamily(with_two_flux_controlnets(FluxFamily.tiny_pipelines["flux-controlnet"]()))
        >>> several.control_arguments({"controlnet_conditioning_scale": 0.5})
        {'controlnet_conditioning_scale': [0.5, 0.5], 'control_mode': [None, None]}
        """
        nets = getattr(getattr(self.pipe, "controlnet", None), "nets", None)
        if nets is None:
            return arguments
        images = arguments.get("control_image")  # a list for several: one per ControlNet, or per mode of one
        count = len(images) if isinstance(images, list) else len(nets)
        scale = arguments.get("controlnet_conditioning_scale",
                              call_parameters(self.pipe)["controlnet_conditioning_scale"].default)
        return {**arguments, "controlnet_conditioning_scale": [scale] * count,
                "control_mode": arguments.get("control_mode", [None] * count)}

    def batched_conditioning(self) -> tuple[type | None, str]:
        if len(getattr(getattr(self.pipe, "controlnet", None), "nets", None) or (0, 0)) == 1:
            return None, (f"{type(self.pipe).__name__} is run per cell (a FluxMultiControlNetModel of one ControlNet "
                          "runs it once per control image)")
        return super().batched_conditioning()

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2  # latents are packed in 2x2 patches

    def guidance_used(self, guidance_scale: float) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)  # dev: an embedding; schnell: ignored

    def ignored_arguments(self) -> dict[str, str]:
        ignored = {"negative_prompt": "FLUX.1 uses a negative prompt only with true_cfg_scale > 1, which "
                                      "img2img-lab does not sweep"}
        if not self.pipe.transformer.config.guidance_embeds:
            ignored["guidance_scale"] = "this FLUX.1 transformer has no guidance embedding (schnell-style)"
        return ignored

    def timestep_arguments(self, scheduler, num_inference_steps, strength, width, height):
        import numpy as np

        factor = self.pipe.vae_scale_factor
        tokens = (height // factor // 2) * (width // factor // 2)
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps),
                "mu": calculate_shift(scheduler.config, tokens, 1.15)}


class TrueCFGFluxFamily(FluxFamily):
    """The FLUX.1 rule with true classifier-free guidance: guidance above 1 runs a negative branch, and the negative
    prompt is used wherever ``__call__`` takes one. Subclassed by the modules of the families that use it; it
    declares no class itself."""

    pipelines, text_to_image, no_strength, refused, scheduler_configs, tiny_pipelines, real_size = (
        {}, {}, {}, {}, (), {}, ())
    batched_classes = {}  # each family that uses the rule declares its own

    def guidance_used(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def ignored_arguments(self) -> dict[str, str]:
        return Family.ignored_arguments(self)
