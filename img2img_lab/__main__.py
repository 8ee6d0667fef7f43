"""``python -m img2img_lab`` (and ``torchrun ... -m img2img_lab sweep CONFIG --out RUN``): the command line."""

import sys

from img2img_lab.cli import main

sys.exit(main())
