"""Reading YAML config files safely: what a hostile or mistyped file cannot do.

:func:`read_config` is the one way img2img-lab reads a YAML config (sweeps and calibrations):

* **no aliases**: ``*name`` references are refused while the file is parsed, before anything is expanded, so a
  "billion laughs" alias bomb is refused in milliseconds instead of growing to gigabytes;
* **no duplicate keys**: YAML keeps the last of two equal keys silently; here it is an error naming both lines;
* **bounded size**: files over :data:`MAX_CONFIG_BYTES` are refused before parsing;
* **clear decoding**: a file that is not UTF-8 is refused with the byte offset;
* **one-line syntax errors** with file, line and column.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "bad.yaml")
>>> _ = open(path, "w").write("prompts: [a\\nstrengths: 0.5\\n")
>>> try:
...     read_config(path)
... except PlanError as error:
...     print(str(error).split(": ", 1)[1][:45])
line 2, column 10: not valid YAML (while pars
"""

from __future__ import annotations

import os
from pathlib import Path

from img2img_lab.errors import PlanError

#: The largest config file read (a sweep config is a few hundred bytes; a long prompt list a few kB).
MAX_CONFIG_BYTES = 1_000_000


def _safe_loader():
    """A SafeLoader subclass that refuses aliases and duplicate keys."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                mark = event.start_mark
                raise PlanError(f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*{event.anchor}) are "
                                f"not allowed in a config. Fix: write the value out instead of referencing it.")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the default constructor reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise PlanError(f"line {key_node.start_mark.line + 1}: key {str(key)[:60]!r} is given twice "
                                    f"(first on line {first}); YAML would silently keep the last. Fix: keep one.")
            return super().construct_mapping(node, deep=deep)

    return ConfigLoader


def read_config(path: str | os.PathLike):
    """Parse a YAML config file (see the module doc); returns the parsed data (``None`` for an empty file).

    Every problem is a :class:`~img2img_lab.errors.PlanError` starting with the file name.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PlanError(f"config file '{path}' does not exist. Fix: check the path.")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PlanError(f"{path}: {size:,} bytes is too large for a config (at most {MAX_CONFIG_BYTES:,}). "
                        f"Fix: pass the config file, not a data file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PlanError(f"{path}: not UTF-8 text (byte {error.start} is 0x{raw[error.start]:02x}). Fix: save the "
                        f"config as UTF-8.") from None
    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a SafeLoader subclass
    except PlanError as error:
        raise PlanError(f"{path}: {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(f"{error.context or ''} {error.problem or ''}".split())
        raise PlanError(f"{path}: {where}not valid YAML ({problem}). Fix: check indentation, quoting and "
                        f"brackets there.") from None
    except yaml.YAMLError as error:
        raise PlanError(f"{path}: not valid YAML ({' '.join(str(error).split())}).") from None
