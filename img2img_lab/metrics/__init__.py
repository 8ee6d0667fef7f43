"""Every output against its source: pixel and perceptual fidelity (SSIM, MS-SSIM, PSNR, ΔE, edges, LPIPS), prompt
adherence, regions and masks, the metric registry (plugins) and LPIPS's weights.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'measure': ['measure_run', 'measure_pairs'], 'registry': ['register_pair_metric', 'register_prompt_scorer', 'unregister_metric']})
