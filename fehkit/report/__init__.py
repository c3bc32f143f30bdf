"""Standalone HTML pages, readable offline: tables and Bokeh figures with BokehJS embedded.

* :mod:`~fehkit.report.spectra` -- ``fehkit inspect``'s page (summary table and spectra) and the page that sets
  simulated spectra beside real ones;
* :mod:`~fehkit.report.results` -- the [Fe/H] results page of ``fehkit demo`` and ``fehkit evaluate``.

Every page is written whole (a temporary file renamed into place) and says SYNTHETIC when its stars are simulated.
"""

from fehkit.report.results import feh_report
from fehkit.report.spectra import inspect_page, realism_page, summary_html

__all__ = ["feh_report", "inspect_page", "realism_page", "summary_html"]
