"""Sana Sprint: the SCM scheduler (``max_timesteps``, ``intermediate_timesteps``), whose strength rule img2img-lab
does not implement. Refused.

>>> list(SanaFamily.refused)
['SanaSprintImg2ImgPipeline']
"""

from __future__ import annotations

from img2img_lab.models.families.base import Family


class SanaFamily(Family):
    name, label = "sana", "Sana"
    refused = {"SanaSprintImg2ImgPipeline": "runs the SCM scheduler (max_timesteps, intermediate_timesteps), whose "
                                            "strength rule img2img-lab does not implement"}
