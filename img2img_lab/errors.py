"""The library's one exception type (and its topical subclasses).

Every rejected input raises :class:`Img2ImgLabError` with a message that says *what* was rejected,
*why*, and *how to fix it*. Catch the base class to handle them all.
"""

from __future__ import annotations


class Img2ImgLabError(ValueError):
    """Base class for every input img2img-lab rejects.

    >>> try:
    ...     raise ImageError("photo.png: the file is empty (0 bytes). Fix: re-export the image.")
    ... except Img2ImgLabError as error:
    ...     print(error)
    photo.png: the file is empty (0 bytes). Fix: re-export the image.

    In Jupyter the error shows as its one line, not a traceback (IPython's ``_render_traceback_`` hook); set
    ``IMG2IMG_LAB_DEBUG=1`` for the traceback.
    """

    def _render_traceback_(self) -> list[str]:
        import os
        import traceback

        if os.environ.get("IMG2IMG_LAB_DEBUG"):
            return traceback.format_exception(type(self), self, self.__traceback__)
        return [f"{type(self).__name__}: {self}"]


class ImageError(Img2ImgLabError):
    """A source image could not be read or does not meet the size rules."""


class PlanError(Img2ImgLabError):
    """A sweep plan or config is invalid."""


class ModelError(Img2ImgLabError):
    """A model could not be found or loaded."""


class StoreError(Img2ImgLabError):
    """A run folder is missing, unreadable, or belongs to a different plan."""


class MetricUnavailable(Img2ImgLabError):
    """A metric cannot run here (missing weights or packages); the message says how to fix it."""
