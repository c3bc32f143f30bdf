"""Reading real DR17 files, visits, apVisit resampling, aspcapStar, and apStar write-read round trips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits

import fehkit.io
from fehkit.errors import OutputError
from fehkit.io import (
    DEFAULT_BAD_BITS,
    PIXMASK_BITS,
    bad_bits_value,
    read_apogee,
    read_apstar,
    read_apvisit,
    resample_to_apstar,
    write_apstar,
)
from fehkit.spectra import CHIPS, SpectrumBatch, apstar_wavelength

from .conftest import make_aspcapstar

REPO = Path(__file__).parents[1]


# -- the real files -------------------------------------------------------------------------------------------
def test_real_files_are_on_the_apstar_grid(examples):
    batch = read_apogee(examples)
    assert batch.n_spectra == 2 and batch.n_pixels == 8575
    assert batch.wave[0] == pytest.approx(15100.80, abs=0.005)
    assert batch.wave[-1] == pytest.approx(16999.81, abs=0.005)
    # log-linear: a constant velocity step of 4.14 km/s per pixel
    dv = np.diff(np.log(batch.wave)) * 299792.458
    assert np.allclose(dv, 4.1427, atol=1e-3)
    assert batch.flux.dtype == np.float32 and batch.mask.dtype == bool


def test_header_meta_of_the_real_files(examples):
    meta = read_apogee(examples).meta
    assert list(meta["star_id"]) == ["2M17335483-2753043", "2M19485057+5005279"]
    assert meta["snr"].tolist() == pytest.approx([154.155, 137.489], abs=1e-3)
    assert meta["nvisits"].tolist() == [3, 1]
    assert meta["vhelio"].tolist() == pytest.approx([15.681, 13.960], abs=1e-3)
    assert meta["field"].tolist() == ["000+02", "K04_083+13"]


def test_chip_gaps_of_the_real_files(examples):
    """Given the combined rows, the two detector gaps come out where docs/apogee_format.md puts them (+-2 A)."""
    for gaps in read_apogee(examples).data_gaps():
        assert len(gaps) == 2
        (lo1, hi1), (lo2, hi2) = gaps
        assert lo1 == pytest.approx(15809.6, abs=2) and hi1 == pytest.approx(15856.8, abs=2)
        assert lo2 == pytest.approx(16434.5, abs=2) and hi2 == pytest.approx(16472.7, abs=2)
        # and they match the packaged chip table
        assert lo1 >= CHIPS["blue"][1] - 1 and hi1 <= CHIPS["green"][0] + 1


def test_masked_fraction_of_the_real_files(examples):
    batch = read_apogee(examples)
    nan_fraction = (~np.isfinite(batch.flux)).mean(axis=1)
    assert np.all((nan_fraction > 0.085) & (nan_fraction < 0.095))  # the ~9% NaN of docs/apogee_format.md
    flagged = (batch.bitmask != 0).mean(axis=1)
    assert np.all((flagged > 0.12) & (flagged < 0.18))  # and its 12-18% non-zero bitmask
    frac = batch.masked_fraction()
    assert np.all((frac > nan_fraction) & (frac < 0.2))
    # NaN and zero-error pixels are always masked
    assert batch.mask[~np.isfinite(batch.flux)].all()


def test_default_bad_bits_mask_flagged_pixels(examples):
    batch = read_apogee(examples)
    bad = (batch.bitmask & bad_bits_value(DEFAULT_BAD_BITS)) != 0
    assert bad.sum() > 50 and batch.mask[bad].all()
    # persistence-only pixels are kept
    persist = batch.bitmask == (1 << PIXMASK_BITS["PERSIST_LOW"])
    keep = persist & np.isfinite(batch.flux) & (batch.ivar > 0)
    assert keep.any() and not batch.mask[keep].any()
    # asking for no bad bits masks fewer pixels
    assert read_apogee(examples, bad_bits=[]).mask.sum() < batch.mask.sum()


def test_visit_rows(examples):
    visits = read_apogee(examples[0], rows="visits")
    assert visits.n_spectra == 3
    assert visits.meta["visit"].tolist() == [1, 2, 3]
    assert visits.meta["snr"].tolist() == pytest.approx([67.20, 90.56, 105.90], abs=0.01)
    assert visits.meta["visit_file"][0] == "apVisit-dr17-5815-56396-212.fits"
    # visit rows carry zeros, not NaN, in the chip gaps; they are masked all the same
    gap = (visits.wave > 15815) & (visits.wave < 15850)
    assert visits.mask[:, gap].all()
    # a one-visit star's visit is its combined row
    single = read_apogee(examples[1], rows="visits")
    assert single.n_spectra == 1 and single.meta["row"][0] == 0 and single.meta["visit"][0] == 1


def test_all_rows_and_explicit_rows(examples):
    assert read_apogee(examples[0], rows="all").n_spectra == 5
    assert read_apogee(examples[1], rows="all").n_spectra == 1  # the all-zero second row is left out
    assert read_apstar(examples[0], rows=[1, 3]).meta["row"].tolist() == [1, 3]


# -- apVisit ----------------------------------------------------------------------------------------------------
def test_apvisit_is_shifted_and_resampled_onto_the_apstar_grid(apvisit_path):
    batch = read_apvisit(apvisit_path)
    assert batch.n_pixels == 8575
    assert batch.meta["rv_applied"][0] == pytest.approx(-44.4206)
    good = ~batch.mask[0]
    assert 0.75 < good.mean() < 0.92
    # compare with the raw file: linear interpolation averages two neighbours, so the propagated variance is
    # (1-t)^2 + t^2 (mean 2/3) of theirs and the S/N per pixel rises by ~sqrt(3/2), not more than sqrt(2)
    with fits.open(apvisit_path) as hdul:
        snr_raw = np.nanmedian(hdul[1].data / hdul[2].data)
        wave_raw = hdul[4].data
    snr = np.median(batch.flux[0, good] * np.sqrt(batch.ivar[0, good]))
    assert 1.1 < snr / snr_raw < np.sqrt(2)
    # the shift: the star approaches at 44.4 km/s, so its rest frame is 10.7 apStar pixels redder than observed
    unshifted = read_apvisit(apvisit_path, rv=0.0)
    rest_start, observed_start = batch.coverage()[0][0], unshifted.coverage()[0][0]
    pixel = 6e-6 * np.log(10)
    assert rest_start / observed_start - 1 == pytest.approx(44.4206 / 299792.458, abs=1.5 * pixel)
    assert wave_raw.min() <= observed_start < wave_raw.min() + 5  # the chip's first pixels are flagged


def test_resampling_is_exact_for_a_line_and_propagates_variance():
    wave = np.linspace(15200.0, 15300.0, 700)  # a finer grid than apStar's, like apVisit
    flux = 2.0 + 0.01 * (wave - 15200.0)
    ivar = np.full(wave.size, 4.0)  # sigma 0.5
    f, iv, m, _ = resample_to_apstar(wave, flux, ivar, np.zeros(wave.size, bool))
    inside = (apstar_wavelength() > 15201) & (apstar_wavelength() < 15299)
    assert np.allclose(f[inside], 2.0 + 0.01 * (apstar_wavelength()[inside] - 15200.0))
    # var = ((1-t)^2 + t^2) * 0.25 lies between 0.125 and 0.25
    var = 1 / iv[inside]
    assert var.min() >= 0.125 - 1e-9 and var.max() <= 0.25 + 1e-9
    assert m[~inside & ((apstar_wavelength() < 15200) | (apstar_wavelength() > 15300))].all()
    # one bad source pixel spoils only the target pixels next to it
    bad = np.zeros(wave.size, bool)
    bad[350] = True
    _, iv2, m2, _ = resample_to_apstar(wave, flux, ivar, bad)
    assert 1 <= (m2 & ~m).sum() <= 2 and (iv2[m2 & ~m] == 0).all()


# -- aspcapStar -------------------------------------------------------------------------------------------------
def test_aspcapstar_reads_normalized_flux_and_aspcap_labels(tmp_path):
    rng = np.random.default_rng(1)
    flux = 1.0 + 0.01 * rng.standard_normal(8575)
    err = np.full(8575, 0.01)
    err[:200] = 0.0  # no data at the blue end, as in real files
    path = make_aspcapstar(tmp_path / "aspcapStar-dr17-2M00000000+0000000.fits", flux, err)
    batch = read_apogee(path)
    assert batch.flux_unit == "" and batch.meta["kind"][0] == "aspcapStar"
    assert batch.meta["star_id"][0] == "2M00000000+0000000"
    assert batch.meta["aspcap_teff"][0] == pytest.approx(4800.0)
    assert batch.mask[0, :200].all() and not batch.mask[0, 200:].any()
    assert np.median(batch.ivar[0, 200:]) == pytest.approx(1e4, rel=1e-3)


# -- writing ----------------------------------------------------------------------------------------------------
def test_write_read_round_trip(examples, tmp_path):
    batch = read_apogee(examples)
    paths = write_apstar(batch, tmp_path)
    assert [p.name for p in paths] == ["apStar-2M17335483-2753043.fits", "apStar-2M19485057+5005279.fits"]
    back = read_apogee(paths)
    np.testing.assert_array_equal(back.flux, batch.flux)
    np.testing.assert_allclose(back.ivar, batch.ivar, rtol=1e-6)
    np.testing.assert_array_equal(back.mask, batch.mask)
    for col in ("star_id", "snr", "vhelio", "field"):
        assert back.meta[col].tolist() == batch.meta[col].tolist()
    assert back.data_gaps() == batch.data_gaps()


def test_written_files_read_by_specutils_apstar_loader(examples, tmp_path):
    from specutils import Spectrum

    batch = read_apogee(examples)
    path = write_apstar(batch.select(0), tmp_path)[0]
    spec = Spectrum.read(path, format="APOGEE apStar")
    np.testing.assert_allclose(spec.spectral_axis.to_value("AA"), batch.wave, rtol=1e-10)
    np.testing.assert_array_equal(spec.flux.value, batch.flux[0])
    assert spec.flux.unit == u.Unit("1e-17 erg / (Angstrom cm2 s)")


def test_user_mask_survives_round_trip(examples, tmp_path):
    batch = read_apogee(examples[1])
    mask = batch.mask.copy()
    mask[0, 4000:4010] = True  # e.g. a user masking a cosmic ray by eye
    masked = SpectrumBatch(batch.wave, batch.flux, batch.ivar, mask, batch.meta, bitmask=batch.bitmask)
    back = read_apogee(write_apstar(masked, tmp_path))
    assert back.mask[0, 4000:4010].all()
    np.testing.assert_array_equal(back.mask, mask)


def test_write_is_atomic(examples, tmp_path, monkeypatch):
    batch = read_apogee(examples[0])

    def broken_writeto(self, name, **kwargs):
        Path(name).write_bytes(b"SIMPLE  =  half a file")
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken_writeto)
    with pytest.raises(OSError, match="disk full"):
        write_apstar(batch, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_to_overwrite_and_other_grids(examples, tmp_path):
    batch = read_apogee(examples[0])
    write_apstar(batch, tmp_path)
    with pytest.raises(OutputError, match="overwrite=True"):
        write_apstar(batch, tmp_path)
    write_apstar(batch, tmp_path, overwrite=True)
    short = SpectrumBatch(batch.wave[:100], batch.flux[:, :100], batch.ivar[:, :100], batch.mask[:, :100])
    with pytest.raises(ValueError, match="expected the apStar grid"):
        write_apstar(short, tmp_path)


# -- provenance -------------------------------------------------------------------------------------------------
def test_manifest_lists_the_packaged_files_with_their_checksums():
    manifest = yaml.safe_load((REPO / "data_manifest.yaml").read_text())
    for entry in manifest["examples"]:
        packaged = REPO / entry["packaged_as"]
        assert hashlib.sha256(packaged.read_bytes()).hexdigest() == entry["sha256_gz"]
        import gzip

        raw = gzip.decompress(packaged.read_bytes())
        assert len(raw) == entry["size"]
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
        if "url" in entry:
            assert entry["url"].startswith("https://data.sdss.org/sas/dr17/apogee/spectro/redux/dr17/stars/")
            assert entry["url"].endswith(entry["file"])


def test_summary_table(examples):
    summary = read_apogee(examples).summary()
    assert isinstance(summary, pd.DataFrame)
    assert list(summary.columns) == [
        "star_id", "file", "row", "snr", "nvisits", "wave_min", "wave_max", "masked_fraction", "chip_gaps"
    ]
    assert summary["chip_gaps"][0].count(";") == 1


def test_our_reader_agrees_with_specutils_on_a_real_file(tmp_path, giant_bytes):
    """Cross-check: specutils' own APOGEE apStar loader gives the same grid, flux and errors for row 0."""
    from specutils import Spectrum

    path = tmp_path / "apStar-dr17-2M17335483-2753043.fits"
    path.write_bytes(giant_bytes)
    ours = read_apogee(path)
    theirs = SpectrumBatch.from_specutils(Spectrum.read(path, format="APOGEE apStar"))
    np.testing.assert_allclose(theirs.wave, ours.wave, rtol=1e-10)
    np.testing.assert_array_equal(theirs.flux, ours.flux)
    usable = ~ours.mask  # specutils keeps no bitmask, so it masks only NaN / zero-error pixels
    np.testing.assert_allclose(theirs.ivar[usable], ours.ivar[usable], rtol=1e-6)
    assert theirs.mask.sum() < ours.mask.sum()


def test_asstar_files_from_lco_are_read_like_apstar(tmp_path, giant_bytes):
    path = tmp_path / "asStar-dr17-2M17335483-2753043.fits"
    path.write_bytes(giant_bytes)
    batch = read_apogee(path)
    assert batch.meta["kind"][0] == "apStar" and batch.meta["star_id"][0] == "2M17335483-2753043"


def test_kind_is_recognized_from_the_layout_when_the_name_says_nothing(tmp_path, giant_bytes, apvisit_path):
    import gzip

    (tmp_path / "star.fits").write_bytes(giant_bytes)
    (tmp_path / "visit.fits").write_bytes(gzip.decompress(apvisit_path.read_bytes()))
    assert read_apogee(tmp_path / "star.fits").meta["kind"][0] == "apStar"
    assert read_apogee(tmp_path / "visit.fits").meta["kind"][0] == "apVisit"
    make_aspcapstar(tmp_path / "normalized.fits", np.ones(8575), np.full(8575, 0.01))
    assert read_apogee(tmp_path / "normalized.fits").meta["kind"][0] == "aspcapStar"


def test_synthetic_files_stay_labelled_synthetic_when_read_back(tmp_path, examples):
    from fehkit.synth import simulate

    sim = simulate({"teff": [4800], "logg": [1.5], "feh": [-2.5], "vmic": [1.8], "snr": [80]}, seed=1)
    back = read_apogee(write_apstar(sim.batch, tmp_path))
    assert back.meta["synthetic"].tolist() == [True]
    assert read_apogee(examples).meta["synthetic"].tolist() == [False, False]


# -- the fast reader (fitsio) and the astropy reader agree ---------------------------------------------------
@pytest.mark.skipif(fehkit.io.fitsio is None, reason="fitsio is not installed")
@pytest.mark.parametrize("rows", ["combined", "visits", "all"])
def test_fitsio_and_astropy_read_the_same_batch(tmp_path, examples, monkeypatch, rows):
    """Plain apStar files go through fitsio; without it astropy reads them: the same arrays and meta, bit for bit."""
    import gzip

    from fehkit.synth import make_benchmark

    paths = [str(p) for p in write_apstar(make_benchmark(4, seed=3).batch, tmp_path / "synthetic")]
    for ex in examples:  # the real DR17 files, gunzipped (fitsio reads plain files; gzip goes to astropy)
        paths.append(str(tmp_path / ex.name.removesuffix(".gz")))
        Path(paths[-1]).write_bytes(gzip.decompress(ex.read_bytes()))
    calls = []
    real = fehkit.io._apstar_batch
    monkeypatch.setattr(fehkit.io, "_apstar_batch", lambda *a: calls.append(a[0]) or real(*a))
    fast = read_apogee(paths, rows=rows)
    assert calls == paths  # every file took the fast path...
    monkeypatch.setattr(fehkit.io, "fitsio", None)
    calls.clear()
    slow = read_apogee(paths, rows=rows)
    assert calls == paths  # ... and astropy's path ends in the same place
    for name in ("flux", "ivar", "mask", "bitmask"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    pd.testing.assert_frame_equal(fast.meta, slow.meta)


@pytest.mark.skipif(fehkit.io.fitsio is None, reason="fitsio is not installed")
def test_files_fitsio_doubts_go_to_astropy_and_its_messages(tmp_path, giant_bytes):
    """A truncated file, one with a table where an image should be, a gzipped one: astropy reads or names them."""
    import gzip

    from fehkit.errors import CorruptFileError, UnsupportedFileError

    whole = tmp_path / "apStar-whole.fits"
    whole.write_bytes(giant_bytes)
    assert fehkit.io._read_apstar_fitsio(str(whole), "auto", "combined", 0) is not None
    cut = tmp_path / "apStar-cut.fits"
    cut.write_bytes(giant_bytes[:-2880])  # the last HDU's data end beyond the file: whole blocks, still truncated
    assert fehkit.io._read_apstar_fitsio(str(cut), "auto", "combined", 0) is None
    with pytest.raises(CorruptFileError, match="apStar-cut.fits"):
        read_apogee(cut)
    with fits.open(whole) as hdul:
        hdus = [hdul[0], fits.BinTableHDU.from_columns([fits.Column("X", "E", array=np.zeros(3))]), *hdul[2:4]]
        fits.HDUList([h.copy() for h in hdus]).writeto(tmp_path / "apStar-table.fits")
    assert fehkit.io._read_apstar_fitsio(str(tmp_path / "apStar-table.fits"), "auto", "combined", 0) is None
    with pytest.raises(UnsupportedFileError, match="HDU1 is a BinTableHDU"):
        read_apogee(tmp_path / "apStar-table.fits")
    (tmp_path / "apStar-z.fits.gz").write_bytes(gzip.compress(giant_bytes))
    assert fehkit.io._read_apstar_fitsio(str(tmp_path / "apStar-z.fits.gz"), "auto", "combined", 0) is None
    assert read_apogee(tmp_path / "apStar-z.fits.gz").n_spectra == 1
    assert fehkit.io._read_apstar_fitsio(str(whole), "aspcapStar", "combined", 0) is None
