"""SpectrumBatch: validation, selection, joining, and the specutils round trip."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
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


def test_meta_given_as_arrays_is_built_into_a_table_when_first_read():
    b = _flat()
    columns = {"star_id": np.array(["a", "b", "c"], dtype=object), "snr": np.array([10.0, np.nan, 30.0])}
    lazy = SpectrumBatch(b.wave, b.flux, b.ivar, b.mask, columns)
    early = lazy.meta_columns(["star_id", "snr", "no_such_column"])
    assert set(early) == {"star_id", "snr"} and early["snr"] is columns["snr"]  # the arrays, not copies
    sub = lazy.select([2, 0])  # rows of the arrays, before any table exists
    kept = lazy.with_arrays(lazy.flux * 2, lazy.ivar, lazy.mask, flux_unit="")
    again = pickle.loads(pickle.dumps(lazy))
    table = lazy.meta
    pd.testing.assert_frame_equal(table, pd.DataFrame({"star_id": ["a", "b", "c"], "snr": [10.0, np.nan, 30.0]}))
    pd.testing.assert_frame_equal(sub.meta, table.iloc[[2, 0]].reset_index(drop=True))
    pd.testing.assert_frame_equal(kept.meta, table)
    assert kept.flux_unit == "" and (kept.flux == 2).all()
    pd.testing.assert_frame_equal(again.meta, table)
    assert dataclasses.replace(lazy, flux_unit="").meta.equals(table)  # still a dataclass
    table["snr"] = -1.0  # once built, the table is what a later reader sees
    assert (lazy.meta_columns(["snr"])["snr"] == -1.0).all() and lazy.meta is table
    assert set(lazy.meta_columns()) == {"star_id", "snr"}
    assert SpectrumBatch(b.wave, b.flux, b.ivar, b.mask, {}).meta.shape == (3, 0)


def test_with_arrays_keeps_a_complete_mask_as_given_and_still_checks_shapes():
    b = _flat()
    b.meta["star_id"] = ["a", "b", "c"]
    flux = b.flux.copy()
    flux[0, 4] = np.nan
    checked = b.with_arrays(flux, b.ivar, b.mask, flux_unit="")
    trusted = b.with_arrays(flux, b.ivar, checked.mask, flux_unit="", mask_complete=True)
    assert checked.mask[0, 4] and trusted.mask is checked.mask and trusted.flux_unit == ""
    assert trusted.meta.equals(b.meta) and trusted.meta is not b.meta
    with pytest.raises(SpectrumShapeError, match="^ivar: expected shape"):
        b.with_arrays(flux, b.ivar[:, :10], b.mask, flux_unit="", mask_complete=True)


@pytest.mark.parametrize("column, found", [(["a", "b", "c"], "found list"), (np.zeros((3, 1)), r"found shape \(3, 1\)"),
                                           (np.zeros(2), "3 values .*found 2")])
def test_bad_meta_columns_are_refused_by_name(column, found):
    b = _flat()
    with pytest.raises(SpectrumShapeError, match=rf"^meta column 'snr': expected .*{found}"):
        SpectrumBatch(b.wave, b.flux, b.ivar, b.mask, {"snr": column})


def test_a_batch_pickled_with_its_table_in_the_old_way_loads():
    b = _flat()
    b.meta["star_id"] = ["a", "b", "c"]
    state = {k: v for k, v in vars(b).items() if k not in ("_meta", "_meta_arrays")}
    state["meta"] = b.meta
    old = SpectrumBatch.__new__(SpectrumBatch)
    old.__setstate__(state)
    pd.testing.assert_frame_equal(old.meta, b.meta)


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
