"""Images in and out: the intake of source images (:mod:`img2img_lab.images.intake`: load, validate, orient, convert,
fit to the model), stable pixel hashes (:mod:`img2img_lab.images.hashes`) and the arrays metrics take
(:mod:`img2img_lab.images.arrays`).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    'intake': ['DEFAULT_MAX_PIXELS', 'DEFAULT_WARN_BELOW', 'RESIZE_POLICIES', 'SmallSourceWarning', 'check_image_files',
               'fit_to_model', 'load_image', 'to_rgb'],
    'hashes': ['content_hash', 'file_pixel_hash'],
    'arrays': ['metric_array', 'metric_pair'],
})
