"""``python -m img2img_lab.cli``: the command line (as ``python -m img2img_lab``)."""

from img2img_lab.cli.main import run

run()
