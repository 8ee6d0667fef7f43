"""Every output against its source: pixel and perceptual fidelity (SSIM, MS-SSIM, PSNR, ΔE, edges, LPIPS), prompt
adherence, regions and masks, the metric registry (built-in metrics and plugins), their availability and weights, and
the measuring of pairs and run folders. The metric functions over two images are here, as scikit-image's and
torchmetrics' are: ``img2img_lab.metrics.ssim(source, output)``.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    'measure': ['measure_pair', 'measure_pairs', 'measure_run'],
    'registry': ['DEFAULT_METRICS', 'METRICS', 'metric_spec', 'register_pair_metric', 'register_prompt_scorer',
                 'unregister_metric'],
    'availability': ['metric_status'],
    'fidelity': ['delta_e', 'edge_f1', 'ms_ssim', 'mse', 'psnr', 'ssim'],
    'lpips_metric': ['lpips'],
})
