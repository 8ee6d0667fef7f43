"""Kandinsky 2.1 / 2.2 / 3: a prior's image embeddings and a MoVQ decoder instead of a VAE. Refused: img2img-lab's
VAE floor and start-noise records assume a latent pipeline with a VAE, and the inpainting ones have no strength.

>>> sorted(KandinskyFamily.refused)[0]
'Kandinsky3Img2ImgPipeline'
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family

_PRIOR = "runs a prior first and decodes with MoVQ, not a VAE: not supported"
_NOISE = "inpaints from pure noise with a prior: it has no strength dial"


class KandinskyFamily(Family):
    name, label = "kandinsky", "Kandinsky 2.x / 3"
    refused = {"KandinskyImg2ImgCombinedPipeline": _PRIOR, "KandinskyV22Img2ImgCombinedPipeline": _PRIOR,
               "Kandinsky3Img2ImgPipeline": "decodes with MoVQ, not a VAE, and slices its timesteps without the "
                                            "scheduler's order: not supported"}
    no_strength = {"KandinskyInpaintCombinedPipeline": _NOISE, "KandinskyV22InpaintCombinedPipeline": _NOISE,
                   "KandinskyV22InpaintPipeline": "inpaints from pure noise: it has no strength dial"}
