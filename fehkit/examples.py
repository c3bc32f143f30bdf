"""Real APOGEE DR17 example spectra packaged with fehkit (SDSS public data; see example_data/README.md).

Two apStar files, a 3-visit M giant and a 1-visit dwarf, neither metal-poor: they show what real files look like
(chip gaps, flagged pixels, visits) and feed ``fehkit inspect``, the tests and the quick-start notebook.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: File names of the packaged examples, in a fixed order.
EXAMPLE_FILES = (
    "apStar-dr17-2M17335483-2753043.fits.gz",
    "apStar-dr17-2M19485057+5005279.fits.gz",
)


def example_paths() -> list[Path]:
    """Return the paths of the packaged real DR17 apStar files.

    Returns
    -------
    list of Path
        Gzipped apStar files that :func:`fehkit.io.read_apogee` reads directly.

    Examples
    --------
    >>> [p.name for p in example_paths()]
    ['apStar-dr17-2M17335483-2753043.fits.gz', 'apStar-dr17-2M19485057+5005279.fits.gz']
    """
    folder = files("fehkit") / "example_data"
    return [Path(str(folder / name)) for name in EXAMPLE_FILES]
