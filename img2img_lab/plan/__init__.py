"""What to generate: :class:`SweepPlan` (the axes), :class:`Cell` (one image's identity), the values an axis takes,
the image conditions (masks, control images) and the tidy table's schema.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'sweep_plan': ['SweepPlan', 'Cell']})
