"""SpectrumBatch: validation, selection, joining, and the specutils round trip."""

from __future__ import annotations

import numpy as np
import pytest

from fehkit.errors import FehkitError, SpectrumShapeError
from fehkit.io import read_apogee
from fehkit.spectra import SpectrumBatch, apstar_wavelength, chip_of


def _flat(n=3, npix=50):
    wave = np.linspace(15200, 15210, npix)
    flux = np.ones((n, npix))
    return SpectrumBatch(wave, flux, np.full((n, npix), 100.0), np.zeros((n, npix), bool))


def test_nan_and_zero_ivar_are_always_masked():
    b = _flat()
    flux = b.flux.copy()
    flux[0, 3] = np.nan
    ivar = b.ivar.copy()
    ivar[1, 7] = 0
    b2 = SpectrumBatch(b.wave, flux, ivar, np.zeros_like(b.mask))
    assert b2.mask[0, 3] and b2.mask[1, 7] and b2.mask.sum() == 2


@pytest.mark.parametrize(
    "field, bad",
    [("flux", np.ones((3, 49))), ("ivar", np.ones((2, 50))), ("mask", np.zeros((3, 50, 1), bool))],
)
def test_shape_errors_name_the_field(field, bad):
    b = _flat()
    kwargs = dict(wave=b.wave, flux=b.flux, ivar=b.ivar, mask=b.mask)
    kwargs[field] = bad
    with pytest.raises(SpectrumShapeError, match=rf"^{field}: expected shape"):
        SpectrumBatch(**kwargs)


def test_wave_must_increase():
    b = _flat()
    with pytest.raises(FehkitError, match="wave: expected strictly increasing"):
        SpectrumBatch(b.wave[::-1], b.flux, b.ivar, b.mask)


def test_select_and_concat(examples):
    batch = read_apogee(examples)
    one = batch[1]
    assert one.n_spectra == 1 and one.meta["star_id"][0] == "2M19485057+5005279"
    both = SpectrumBatch.concat([batch.select([1]), batch.select([0])])
    assert both.meta["star_id"].tolist() == ["2M19485057+5005279", "2M17335483-2753043"]
    np.testing.assert_array_equal(both.flux[1], batch.flux[0])
    with pytest.raises(SpectrumShapeError, match="different wavelength grid"):
        SpectrumBatch.concat([batch, _flat()])


def test_specutils_round_trip(examples):
    from astropy.nddata import InverseVariance

    batch = read_apogee(examples)
    spec = batch.to_specutils()
    assert spec.flux.shape == (2, 8575)
    assert isinstance(spec.uncertainty, InverseVariance)
    assert spec.meta["spectra"][0]["star_id"] == "2M17335483-2753043"
    back = SpectrumBatch.from_specutils(spec)
    np.testing.assert_array_equal(back.flux, batch.flux)
    np.testing.assert_allclose(back.ivar, batch.ivar, rtol=1e-6)
    np.testing.assert_array_equal(back.mask, batch.mask)
    assert back.flux_unit == batch.flux_unit or back.to_specutils().flux.unit == spec.flux.unit
    assert back.meta["star_id"].tolist() == batch.meta["star_id"].tolist()


def test_from_specutils_list_with_stddev_and_descending_axis():
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum

    wave = np.linspace(15300, 15200, 40) * u.AA  # descending, like apVisit chips
    flux = np.linspace(1.0, 2.0, 40) * u.Jy
    spectra = [Spectrum(flux=flux, spectral_axis=wave, uncertainty=StdDevUncertainty(np.full(40, 0.1))) for _ in "ab"]
    batch = SpectrumBatch.from_specutils(spectra)
    assert batch.n_spectra == 2 and np.all(np.diff(batch.wave) > 0)
    assert batch.flux[0, 0] == pytest.approx(2.0) and batch.ivar[0, 0] == pytest.approx(100.0)
    assert batch.flux_unit == "Jy"


def test_chip_of():
    w = apstar_wavelength()
    chips = chip_of(w)
    assert set(chips) == {"", "blue", "green", "red"}
    assert chip_of(15830.0) == "" and chip_of(16000.0) == "green"
