"""Errors a user can cause, all subclasses of one :class:`FehkitError`.

Every message names the file or field, what was found and what was expected, so that a survey pipeline can log
it and a student can act on it. Catch :class:`FehkitError` to handle them all.
"""

from __future__ import annotations

import os


class FehkitError(Exception):
    """Base class of every error fehkit raises for bad input."""


class FehkitWarning(UserWarning):
    """Base class of fehkit's warnings (a skipped file, a suspicious header value)."""


class SpectrumShapeError(FehkitError, ValueError):
    """Arrays of a :class:`~fehkit.spectra.SpectrumBatch` do not fit together."""


class SpectrumFileError(FehkitError):
    """A spectrum file cannot be read as the format it claims or was asked to be.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file.
    problem : str
        What was found and what was expected.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # pickled by its own arguments, so the error survives a trip from a reading process or a Dask worker
        return type(self), (self.path, self.problem)


class SpectrumFileNotFoundError(SpectrumFileError, FileNotFoundError):
    """The file does not exist."""


class NotFITSError(SpectrumFileError):
    """The file is empty, or its bytes are not FITS (nor gzipped FITS)."""


class CorruptFileError(SpectrumFileError):
    """The file is FITS (or gzip) but truncated or damaged."""


class UnsupportedFileError(SpectrumFileError):
    """A readable FITS file that is not an APOGEE apStar/asStar, aspcapStar or apVisit spectrum."""


class MissingHDUError(SpectrumFileError):
    """An HDU the format requires is absent or holds no data."""


class HeaderError(SpectrumFileError):
    """A required header keyword is missing or has a value the format does not allow."""


class GridError(SpectrumFileError):
    """The wavelength grid is not the one the format defines (wrong NAXIS1, CRVAL1, CDELT1 or CTYPE1)."""


class ShapeMismatchError(SpectrumFileError):
    """Flux, error and mask HDUs have different shapes."""


class BadValuesError(SpectrumFileError):
    """The data are present but unusable: all NaN, negative errors, no pixel with a positive error."""


class RowSelectionError(SpectrumFileError):
    """The requested rows (visits) are not in the file."""


class LineListError(FehkitError, ValueError):
    """A line list lacks a column or holds values outside the range fehkit can use."""


class PhysicsGridError(FehkitError, ValueError):
    """A physics grid file (curve of growth, blend background) is missing, unreadable or inconsistent."""


class GridRangeError(FehkitError, ValueError):
    """Stellar parameters or equivalent widths do not fit the physics grid they are used with."""


class PlotInputError(FehkitError, ValueError):
    """A figure or a widget got data it cannot draw: a missing column, a wrong shape, an unknown choice."""


class OutputError(FehkitError):
    """An output cannot be written where asked, or would replace a file or folder that fehkit did not write."""


class InputTableError(FehkitError, ValueError):
    """A table handed in (stellar parameters, training stars, truth.csv) cannot be used.

    It cannot be read, lacks a column, matches no spectrum, or holds values that are not numbers.
    """


class UsageError(FehkitError, ValueError):
    """An argument fehkit cannot use: a negative seed or count, a file where a folder is expected, an unknown device."""
