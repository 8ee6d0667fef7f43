"""A diffusers pipeline behind one handle: loading (:func:`~img2img_lab.models.loading.load_model`), the handle
(:class:`~img2img_lab.models.handle.ModelHandle`, which answers everything asked of a model), one module per diffusers
family (:mod:`img2img_lab.models.families`) and the registry built from them, the step plans a strength runs,
fingerprints, model information and thread settings.
"""
