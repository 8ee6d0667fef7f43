"""Tiny random-weight pipelines of the real diffusers classes, built offline, for tests and benchmarks.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'tiny_sd': ['make_tiny_pipeline', 'save_tiny_pipeline', 'write_byte_level_tokenizer'], 'tiny_families': ['save_tiny_family'], 'tiny_conditioned': ['save_tiny_conditioned']})
