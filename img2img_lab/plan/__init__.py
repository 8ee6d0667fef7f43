"""What to generate: the axes, declared once (:mod:`img2img_lab.plan.axes`), :class:`SweepPlan` and :class:`Cell`
derived from them, the values an axis takes, the inpainting and ControlNet settings, and the tidy table's schema.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'sweep_plan': ['SweepPlan', 'Cell'],
                                                                           'axes': ['AXES', 'Axis']})
