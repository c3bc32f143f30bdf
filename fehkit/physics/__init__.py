"""Physics of the Fe I lines, computed once with MOOG on atmosnet model atmospheres and shipped as data.

* :class:`CurveOfGrowth` -- EW of each packaged Fe I line on Teff x log g x [Fe/H] x vmic x [alpha/Fe];
  interpolation, and inversion EW -> [Fe/H] (the classical curve-of-growth method). Two grids are shipped:
  ``CurveOfGrowth.load("moog")`` (the default) and ``CurveOfGrowth.load("sme")``, a second radiative-transfer
  code (SME) on the same atmospheres over the metal-poor domain (``docs/second_physics.md``);
* :class:`BackgroundLibrary` -- every other H-band line (atoms and molecules), LSF-convolved on the apStar
  grid, for blends in synthetic spectra.

How the data were made, and what was done at the grid's edges: ``fehkit/physics/README.md``.
"""

from fehkit.physics.background import BackgroundLibrary
from fehkit.physics.cog import CurveOfGrowth

__all__ = ["BackgroundLibrary", "CurveOfGrowth"]
