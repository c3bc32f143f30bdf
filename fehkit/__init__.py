"""fehkit: iron abundances of extremely metal-poor stars from APOGEE H-band spectra.

The science core is a batch-first numpy library; notebooks, the ``fehkit`` command, Dask and the HTTP
service all call it the same way. See ``README.md`` and the notebooks for a tour.
"""

from importlib.metadata import PackageNotFoundError, version

from fehkit.continuum import normalize
from fehkit.errors import FehkitError
from fehkit.ew import EWTable, measure_ew
from fehkit.io import read_apogee, write_apstar
from fehkit.lines import load_linelist
from fehkit.physics import CurveOfGrowth
from fehkit.spectra import SpectrumBatch
from fehkit.synth import make_benchmark, simulate

try:
    __version__ = version("fehkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CurveOfGrowth",
    "EWTable",
    "FehkitError",
    "SpectrumBatch",
    "load_linelist",
    "make_benchmark",
    "measure_ew",
    "normalize",
    "read_apogee",
    "simulate",
    "write_apstar",
    "__version__",
]
