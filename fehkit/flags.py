"""The quality flags of an [Fe/H] prediction: their names, their order, and how to read them.

Every prediction (``FeHEnsemble.predict``, ``fehkit predict``, the demo's ``predictions.csv``) carries ``flag``:
``"ok"`` when nothing applies, else the names that apply joined by ``";"`` in the order of :data:`FLAGS`, e.g.
``"out_of_domain;grid_edge"``; ``flag_reason`` spells each one out. The flags are

* ``upper_limit`` -- the joint Fe signal is below 3 sigma: ``feh_upper`` is a 3-sigma upper limit, ``feh`` is
  not a measurement;
* ``no_usable_lines`` -- no line could enter the joint likelihood: no measurement and no limit;
* ``out_of_domain`` -- the star lies outside what the model was trained on: a parameter (Teff, log g, vmic,
  [Fe/H], S/N) outside the training range, or the star far from the training stars in feature space;
* ``grid_edge`` -- the classical method hit the curve-of-growth grid: Teff, log g or vmic clipped to the grid's
  edge, or the joint likelihood peaked at its top ([Fe/H] = -0.5);
* ``grid_extrapolated`` -- the star's parameters lean on grid nodes that were filled (extrapolated), not computed.

Compare flags with :func:`has_flag`, never with ``== "ok"``: a star may carry several.

Examples
--------
>>> join([True, False, False, True, False])
'upper_limit;grid_edge'
>>> has_flag(["ok", "upper_limit;grid_edge", "grid_edge"], "upper_limit").tolist()
[False, True, False]
>>> is_ok(["ok", "grid_edge"]).tolist()
[True, False]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["FLAGS", "OK", "SEP", "detected", "has_flag", "is_ok", "join", "join_columns", "split", "tally"]

#: The flag names, in the order they are written.
FLAGS = ("upper_limit", "no_usable_lines", "out_of_domain", "grid_edge", "grid_extrapolated")
#: The value of ``flag`` when no flag applies.
OK = "ok"
#: What joins several flags (and their reasons).
SEP = ";"


def join(applies: Sequence[bool] | dict[str, bool]) -> str:
    """Return the ``flag`` value of one star: ``"ok"`` or the names that apply joined by ``";"`` in order.

    ``applies`` is one bool per name of :data:`FLAGS` (in that order), or a mapping name -> bool.
    """
    if isinstance(applies, dict):
        unknown = sorted(set(applies) - set(FLAGS))
        if unknown:
            raise ValueError(f"flags {unknown}: not flag names; expected some of {list(FLAGS)}")
        applies = [bool(applies.get(name, False)) for name in FLAGS]
    if len(applies) != len(FLAGS):
        raise ValueError(f"{len(applies)} values; expected one per flag {list(FLAGS)}")
    names = [name for name, on in zip(FLAGS, applies, strict=True) if on]
    return SEP.join(names) if names else OK


def join_columns(columns: dict[str, Any], n: int) -> np.ndarray:
    """Return the ``flag`` of ``n`` stars from boolean arrays by flag name (absent names do not apply)."""
    code = np.zeros(n, np.int64)  # bit j: FLAGS[j] applies; each of the 32 combinations is joined once
    for bit, name in enumerate(FLAGS):
        code |= np.broadcast_to(np.asarray(columns.get(name, False), bool), (n,)).astype(np.int64) << bit
    texts = np.array([join([(c >> bit) & 1 == 1 for bit in range(len(FLAGS))]) for c in range(1 << len(FLAGS))],
                     dtype=object)
    return texts[code]


def split(flag: Any) -> list[str]:
    """Return the flag names of one ``flag`` value (``[]`` for ``"ok"`` or an empty value)."""
    text = "" if flag is None or (isinstance(flag, float) and np.isnan(flag)) else str(flag)
    return [part for part in (p.strip() for p in text.split(SEP)) if part and part != OK]


def has_flag(flags: Iterable[Any], name: str) -> np.ndarray:
    """Return a bool array: whether each ``flag`` value (a Series, array or list) carries ``name``."""
    if name not in FLAGS:
        raise ValueError(f"flag {name!r}: not a flag name; expected one of {list(FLAGS)}")
    return np.array([name in split(f) for f in _values(flags)], dtype=bool)


def is_ok(flags: Iterable[Any]) -> np.ndarray:
    """Return a bool array: whether each ``flag`` value is ``"ok"`` (no flag applies)."""
    return np.array([not split(f) for f in _values(flags)], dtype=bool)


def detected(flags: Iterable[Any]) -> np.ndarray:
    """Return a bool array: the stars with a measured [Fe/H] (neither ``upper_limit`` nor ``no_usable_lines``).

    The other flags warn about a measurement; these two say there is none.
    """
    values = _values(flags)
    return ~has_flag(values, "upper_limit") & ~has_flag(values, "no_usable_lines")


def tally(flags: Iterable[Any]) -> dict[str, int]:
    """Count the stars per flag name (a star with two flags counts twice), ``ok`` first, in :data:`FLAGS` order.

    Examples
    --------
    >>> tally(["ok", "upper_limit;grid_edge", "grid_edge"])
    {'ok': 1, 'upper_limit': 1, 'grid_edge': 2}
    """
    values = _values(flags)
    counts = {OK: int(is_ok(values).sum())}
    counts.update({name: int(has_flag(values, name).sum()) for name in FLAGS})
    return {k: v for k, v in counts.items() if v}


def _values(flags: Iterable[Any]) -> list[Any]:
    return list(flags.tolist() if hasattr(flags, "tolist") else flags)
