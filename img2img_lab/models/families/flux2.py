"""FLUX.2 (and Klein): reference editors that always start from noise. No strength dial: refused, with what they do
instead.

>>> sorted(Flux2Family.no_strength)
['Flux2KleinPipeline', 'Flux2Pipeline']
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family

_REFERENCE = "edits from a reference image and always starts from noise: it has no strength dial"


class Flux2Family(Family):
    name, label = "flux2", "FLUX.2"
    no_strength = {"Flux2Pipeline": _REFERENCE, "Flux2KleinPipeline": _REFERENCE}
