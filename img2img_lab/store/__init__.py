"""The run folder: the only code that knows file names. :class:`RunStore` (images, table, manifest), the table's
append-only log, the folder rules that refuse links and foreign files, and the audit of a folder's integrity.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={'run_store': ['RunStore']})
