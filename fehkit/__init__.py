"""fehkit: iron abundances of extremely metal-poor stars from APOGEE H-band spectra.

The science core is a batch-first numpy library that the notebooks and the ``fehkit`` command call the same way.
Its modules follow the pipeline, in order:

* :mod:`fehkit.spectra`, :mod:`fehkit.io` -- the :class:`SpectrumBatch` container; APOGEE readers and writer;
* :mod:`fehkit.lines` -- the packaged Fe I line list;
* :mod:`fehkit.continuum` -- continuum normalization (:func:`normalize`);
* :mod:`fehkit.ew` -- batched Voigt equivalent widths (:func:`measure_ew`, :class:`EWTable`);
* :mod:`fehkit.physics` -- curves of growth, line widths, the classical joint-likelihood abundance;
* :mod:`fehkit.features` -- EWs and stellar parameters into the ensemble's input;
* :mod:`fehkit.models` -- the random forest, XGBoost and MLP ensemble, saved in safe formats;
* :mod:`fehkit.training` -- train and predict on a user's spectra; :mod:`fehkit.benchmark` -- ``fehkit demo``;
* :mod:`fehkit.evaluate` -- metrics, bins, coverage and the targets;
* :mod:`fehkit.synth` -- the synthetic benchmark; :mod:`fehkit.data` -- catalogs, downloads, cross-match;
* :mod:`fehkit.plots`, :mod:`fehkit.report`, :mod:`fehkit.widgets` -- figures, HTML pages, notebook widgets.

See ``README.md``, ``docs/`` and the notebooks for a tour.
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
