"""Safe file output and small file helpers that every stage shares, without the FITS layer.

Output files and folders are written whole: a temporary file or folder beside the target, renamed into place only
when complete, so that an interrupt leaves the old result or the new one, never a mix. A folder fehkit writes
carries a marker file (:data:`MARKER`); an existing folder is only ever replaced when it holds that marker or is
empty, so that a mistyped ``--out`` never deletes a user's own files. Hashes identify what a model was trained on or
what a download holds; :func:`jsonable` turns numpy results into plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fehkit.errors import OutputError

#: The file that marks a folder as written by fehkit (JSON: what wrote it and when).
MARKER = ".fehkit-output.json"


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block finishes.

    Whatever fails inside the block, no half-written ``path`` is left behind (the temporary file is removed).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("star_id,snr")
    >>> target.read_text()
    'star_id,snr'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(obj: Any) -> Any:
    """Return ``obj`` with numpy scalars and arrays as Python numbers and lists; NaN and inf become None.

    Floats are rounded to 6 decimals (metrics files are read by people and diffed).
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    return obj


def is_fehkit_folder(path: str | os.PathLike[str]) -> bool:
    """Return True when ``path`` is a folder that fehkit wrote (it holds :data:`MARKER`)."""
    return (Path(path) / MARKER).is_file()


def check_output_folder(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check, before any work is done, that a folder can be written at ``path``; return it resolved.

    Refused with :class:`~fehkit.errors.OutputError`: a path that is a file; the current folder or one above it;
    a parent folder that cannot be written; an existing folder without ``overwrite``; and, even with
    ``overwrite``, an existing folder that fehkit did not write (no :data:`MARKER`) and that is not empty.
    """
    target = Path(path).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise OutputError(f"{path}: is a file; expected a folder name for the output (or a folder fehkit wrote)")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise OutputError(f"{path}: is the current folder (or holds it); expected the name of a new subfolder, "
                          "e.g. --out results")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {parent} (permission denied); expected a writable location")
    if target.is_dir():
        if not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite (overwrite=True) to replace it")
        if not is_fehkit_folder(target) and any(target.iterdir()):
            raise OutputError(f"{path}: exists and was not written by fehkit (no {MARKER}); refusing to replace "
                              "it. Expected a new folder name, an empty folder or one fehkit wrote")
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot be replaced (permission denied)")
    return target


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, kind: str, overwrite: bool = False,
                  about: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success mark it and rename it to ``path``.

    ``path`` is checked first (:func:`check_output_folder`). When the block finishes, :data:`MARKER` is written
    (``kind``, e.g. ``"model"`` or ``"demo"``, plus ``about``) and the folder renamed into place; an existing
    folder there is moved aside first and removed last, so an interrupt at any point leaves either the old
    result or the new one. When the block fails, the temporary folder is removed and the old result stays.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "results"
    >>> with atomic_folder(out, kind="example") as tmp:
    ...     _ = (tmp / "table.csv").write_text("star_id,snr")
    >>> sorted(p.name for p in out.iterdir())
    ['.fehkit-output.json', 'table.csv']
    """
    from datetime import UTC, datetime

    target = check_output_folder(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes a private folder; give the result the usual permissions
    try:
        yield tmp
        from fehkit import __version__

        marker = {"written_by": "fehkit", "fehkit_version": __version__, "kind": kind,
                  "created": datetime.now(UTC).isoformat(timespec="seconds"), **(about or {})}
        (tmp / MARKER).write_text(json.dumps(jsonable(marker), indent=2) + "\n")
        if target.exists():
            check_output_folder(target, overwrite)  # it may have changed while we worked
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
