"""Keep diffusers' and transformers' loading bars and advice off the CLI's terminal, without importing them early.

Importing diffusers takes seconds (torch, its compiler, every pipeline's helpers), so a command that loads no model
must not import it just to silence it: :func:`quiet_model_libraries` quiets what is already imported and asks
whoever imports these libraries later to call :func:`apply_quiet` (the model and CLIP loaders do).

>>> quiet_model_libraries(); apply_quiet()
"""

from __future__ import annotations

import sys

#: Whether the process asked for quiet model libraries (the CLI does, unless --debug).
_WANTED = {"quiet": False}
_LOGGING_MODULES = ("diffusers.utils.logging", "transformers.utils.logging")


def quiet_model_libraries() -> None:
    """Hide diffusers' and transformers' loading bars and advice, now and whenever they are imported later."""
    _WANTED["quiet"] = True
    apply_quiet()


def apply_quiet() -> None:
    """Quiet the model libraries imported so far, if :func:`quiet_model_libraries` asked for it."""
    if not _WANTED["quiet"]:
        return
    for name in _LOGGING_MODULES:
        logging = sys.modules.get(name)
        if logging is not None:
            logging.disable_progress_bar()
            logging.set_verbosity_error()


class loading_bars_off:
    """Within the block, diffusers' and transformers' "Loading pipeline components" / "Loading weights" bars stay
    off (a notebook keeps them frozen in its saved output); afterwards each is as it was.

    >>> import diffusers.utils.logging as logging
    >>> with loading_bars_off():
    ...     logging.is_progress_bar_enabled()
    False
    """

    def __enter__(self):
        import importlib

        self._modules = [importlib.import_module(name) for name in _LOGGING_MODULES]
        self._enabled = [module.is_progress_bar_enabled() for module in self._modules]
        for module in self._modules:
            module.disable_progress_bar()
        return self

    def __exit__(self, *exc) -> None:
        for module, enabled in zip(self._modules, self._enabled):
            if enabled:
                module.enable_progress_bar()
