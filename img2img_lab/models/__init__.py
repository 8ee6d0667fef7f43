"""A diffusers pipeline behind one handle: loading (:func:`load_pipeline`), the handle (:class:`ModelHandle`), the
family adapters that turn a strength into a step plan, the registry of every image-conditioned pipeline class,
fingerprints, model information and thread settings.
"""
