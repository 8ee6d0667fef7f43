"""One module per diffusers family, as diffusers keeps ``pipelines/<family>/``: everything img2img-lab knows of a
family is in its module — the classes it runs by task and the ones it refuses, its strength rule, sizes and call
arguments, its VAE round trip, its batched conditioning, its bundled scheduler configs and its tiny random pipelines
(:mod:`img2img_lab.models.families.base` says what each declares). The registry (:mod:`img2img_lab.models.registry`)
lists the modules' family classes; adding a family is one module and one entry there.

A family module imports no torch or diffusers when it is imported (only inside the functions that build or run a
pipeline), so reading the declarations is cheap.
"""
