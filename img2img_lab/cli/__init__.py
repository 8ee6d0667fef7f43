"""The ``img2img-lab`` command: the parser (:mod:`.main`), the commands, the demo and the doctor.
"""
