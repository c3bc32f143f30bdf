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

import importlib
from importlib.metadata import PackageNotFoundError, version

#: What ``fehkit.<name>`` gives, and the module it comes from. They are imported on first use, so that
#: ``import fehkit.io`` (in a reading process, say) does not also import the compiled kernels and scipy.
_EXPORTS = {
    "CurveOfGrowth": "fehkit.physics",
    "EWTable": "fehkit.ew",
    "FehkitError": "fehkit.errors",
    "SpectrumBatch": "fehkit.spectra",
    "load_linelist": "fehkit.lines",
    "make_benchmark": "fehkit.synth",
    "measure_ew": "fehkit.ew",
    "normalize": "fehkit.continuum",
    "read_apogee": "fehkit.io",
    "simulate": "fehkit.synth",
    "write_apstar": "fehkit.io",
}

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


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, e.g. fehkit.features after a bare ``import fehkit``
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
