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
    give_usual_permissions(tmp)  # mkstemp makes 0600 files
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def give_usual_permissions(path: str | os.PathLike[str]) -> None:
    """Give a file (0666) or folder (0777) the permissions the user's umask gives new ones.

    Temporary files and folders (``mkstemp``, ``mkdtemp``, safetensors) are private; an output renamed into place
    should look like any other file the user writes.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)

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


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the :data:`MARKER` content of a folder fehkit wrote (``kind``, ``command``, ...); None without one."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _check_parent(path: str | os.PathLike[str], target: Path) -> None:
    """Refuse an output whose nearest existing parent is a file or cannot be written."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file; expected a folder to write in")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {parent} (permission denied); expected a writable location")


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check, before any work is done, that a file can be written at ``path``; return it resolved.

    Refused with :class:`~fehkit.errors.OutputError`: a path that is a folder, a parent that is a file, a folder
    that cannot be written. An existing file is replaced (atomically, by :func:`atomic_output`).
    """
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise OutputError(f"{path}: is a folder; expected a file name for the output, e.g. {Path(path) / 'out.csv'}")
    _check_parent(path, target)
    if target.exists() and not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be replaced (permission denied)")
    return target


#: Float columns written at full precision (the shortest text that reads back to the same number), because they
#: identify a row (a line's vacuum wavelength) and are joined on; every other float column gets 6 significant digits.
EXACT_COLUMNS = frozenset({"line_wave", "wave_vac", "wave_air", "window_lo", "window_hi", "wave_min", "wave_max"})


def write_table(frame: Any, path: str | os.PathLike[str], *, comment: str | None = None,
                digits: int = 6, exact: frozenset[str] | set[str] = EXACT_COLUMNS) -> Path:
    """Write a DataFrame as CSV, atomically, with one precision rule for every CSV fehkit writes.

    Float columns get ``digits`` significant digits (0.001 mA for an EW below 1000 mA, 1e-5 dex for a [Fe/H]
    between -10 and -1), except the ``exact`` columns (wavelengths that identify a line, :data:`EXACT_COLUMNS`),
    which are written at full precision so that they read back to the same number. NaN is an empty field.
    ``comment`` is written first, each of its lines prefixed by ``# `` (read back with ``comment="#"``).
    """
    out = frame.copy()
    for col in out.columns:
        if col in exact and out[col].dtype.kind == "f":
            values = out[col].to_numpy(np.float64)
            out[col] = np.array(["" if np.isnan(v) else repr(v) for v in values.tolist()], dtype=object)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        if comment:
            fh.writelines(f"# {line}\n" for line in comment.splitlines())
        out.to_csv(fh, index=False, float_format=f"%.{digits}g")
    return Path(path)


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
    _check_parent(path, target)
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
    give_usual_permissions(tmp)  # mkdtemp makes a private folder
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
