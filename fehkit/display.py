"""How fehkit's result objects print: a one-line ``repr`` and a small HTML table for notebooks.

A result holds arrays of thousands of spectra; printing them helps no one. Each result object lists a few facts
(shape, counts, flags, whether it is synthetic) and these two functions turn them into text or HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def text_summary(name: str, facts: Sequence[tuple[str, object]]) -> str:
    """Return ``<name key=value, ...>`` on one line.

    Examples
    --------
    >>> text_summary("EWTable", [("spectra", 3), ("lines", 30)])
    '<EWTable spectra=3, lines=30>'
    """
    return f"<{name} " + ", ".join(f"{k}={v}" for k, v in facts) + ">"


def html_summary(name: str, facts: Sequence[tuple[str, object]], note: str = "") -> str:
    """Return a two-column HTML table of ``facts`` under a bold ``name`` (every text escaped)."""
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in facts)
    extra = f"<div style='color:#900'>{html.escape(note)}</div>" if note else ""
    return f"<div><b>{html.escape(name)}</b>{extra}<table>{rows}</table></div>"


def counts(values: Sequence[object]) -> str:
    """Return ``"ok 40, upper_limit 20"``: how often each value occurs, most common first.

    Examples
    --------
    >>> counts(["ok", "upper_limit", "ok"])
    'ok 2, upper_limit 1'
    """
    tally: dict[str, int] = {}
    for v in values:
        tally[str(v)] = tally.get(str(v), 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"
