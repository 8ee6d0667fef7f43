"""``python -m img2img_lab`` (and ``torchrun ... -m img2img_lab sweep CONFIG --out RUN``): the command line."""

from img2img_lab.cli.main import run

run()
