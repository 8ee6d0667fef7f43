"""DeepFloyd IF: a pixel-space cascade (stage I at 64 px, no VAE). Refused: img2img-lab's VAE floor and start-noise
records assume a latent pipeline.

>>> sorted(DeepFloydIFFamily.refused)
['IFImg2ImgPipeline', 'IFInpaintingPipeline']
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family

_PIXELS = ("is a pixel-space cascade (stage I at 64 px, no VAE): img2img-lab's VAE floor and start-noise records "
           "assume a latent pipeline")


class DeepFloydIFFamily(Family):
    name, label = "if", "DeepFloyd IF"
    refused = {"IFImg2ImgPipeline": _PIXELS, "IFInpaintingPipeline": _PIXELS}
