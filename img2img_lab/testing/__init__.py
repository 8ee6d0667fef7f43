"""Tiny random-weight pipelines of the real diffusers classes, built offline, for tests and benchmarks
(:mod:`img2img_lab.testing.tiny`).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'lora': ['random_lora_file'], 'tiny': [
    'REAL_SIZE_ARCHITECTURES', 'TINY_FAMILIES', 'make_real_size_pipeline', 'make_sd15_sized_pipeline',
    'make_tiny_family', 'make_tiny_pipeline', 'make_tiny_variant', 'save_tiny_family', 'save_tiny_pipeline']})
