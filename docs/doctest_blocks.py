"""A griffe extension for the API reference: the docstrings' doctest examples (``>>>`` blocks, their output
included) become fenced Python code, so Markdown does not read ``>>>`` as a quote or ``[1, 2]`` as a link, and
Sphinx roles (``:func:`x```) become code spans."""

from __future__ import annotations

import re

from griffe import Extension

_ROLE = re.compile(r":(?:func|mod|class|meth|data|attr|exc|obj):`~?\.?([^`]+)`")
_BLOCK = re.compile(r"(^[ \t]*>>> .*\n(?:^[ \t]*(?:\.\.\.|>>>|\S).*\n)*)", re.M)


def fence_doctests(text: str) -> str:
    """``text`` with every doctest block (a ``>>>`` line and the lines up to the next blank one) fenced as Python
    (``tests/test_docs.py`` holds an example)."""
    return _BLOCK.sub(lambda match: "```python\n" + match.group(1) + "```\n", text if text.endswith("\n") else text + "\n")


class DoctestBlocks(Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = fence_doctests(text) if ">>> " in text else text
