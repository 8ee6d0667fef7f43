"""What a strength value means: the start timestep and noise level each diffusers family and each other tool
(AUTOMATIC1111, ComfyUI, InvokeAI) derives from it, and the translation between them.
"""
