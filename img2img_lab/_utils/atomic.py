"""Atomic file writes that honour the umask.

A file is written to a hidden temporary file (same file system), flushed and fsynced, given the mode a plain
``open(path, "w")`` would give it (``0o666 & ~umask``: a shared study folder or a served report stays readable to
the group and others when the umask says so), then ``os.replace``-d over the final name. A reader, or a killed
writer, therefore sees the old complete file or the new complete file, never a partial one. A file whose content is
checked wherever it is read (a cell's image against the pixel hash its row records) may skip the fsync
(``durable=False``): a killed process still leaves no partial file, and what a power cut takes is found damaged and
made again.

>>> atomic_write_json("/tmp/img2img-lab-atomic.json", {"a": 1})
PosixPath('/tmp/img2img-lab-atomic.json')
>>> oct(os.stat("/tmp/img2img-lab-atomic.json").st_mode & 0o777) == oct(0o666 & ~current_umask())
True
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process's umask (read without changing it for longer than two system calls).

    >>> 0 <= current_umask() <= 0o777
    True
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True,
                 temp_dir: str | os.PathLike | None = None, durable: bool = True) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temp file that then replaces ``path``.

    The temp file lives in ``temp_dir`` (same file system; default: ``path``'s folder), so a folder of final
    files never shows a partial one, even right after a SIGKILL. The final file's mode is ``0o666 & ~umask``.
    ``durable=False`` skips the fsync (0.4 ms a file on this machine's SSD, far more on a network disk), for files
    whose readers check their content.

    >>> atomic_write("/tmp/hello.txt", lambda f: f.write("hi"), binary=False)
    PosixPath('/tmp/hello.txt')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    for attempt in range(3):  # a finished sweep removes an empty temp folder; make it again if it just went
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~current_umask())
            if durable:
                os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any, *, temp_dir: str | os.PathLike | None = None) -> Path:
    """Write JSON atomically (sorted keys, indented, non-JSON values as strings).

    >>> json.loads(atomic_write_json("/tmp/img2img-lab-list.json", [1, 2]).read_text())
    [1, 2]
    """
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda stream: stream.write(text), binary=False, temp_dir=temp_dir)
