"""Malformed files: each raises a subclass of FehkitError naming the file and what was expected."""

from __future__ import annotations

import gzip
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits

from fehkit import errors
from fehkit.errors import FehkitError, FehkitWarning
from fehkit.io import read_apogee


def _write(hdul, path):
    hdul.writeto(path, overwrite=True)
    return path


# Each case: name -> (builder(tmp_path, apstar_hdul, giant_bytes) -> path, expected error class, words in message)
def truncated_fits(tmp, hdul, raw):
    path = tmp / "apStar-truncated.fits"
    path.write_bytes(raw[: len(raw) // 2 + 100])
    return path


def truncated_on_block(tmp, hdul, raw):
    path = tmp / "apStar-truncated-block.fits"
    path.write_bytes(raw[: 2880 * 300])  # a whole number of blocks, but the data units stop early
    return path


def not_fits(tmp, hdul, raw):
    path = tmp / "apStar-notfits.fits"
    path.write_text("star_id,flux\n2M0000,1.0\n")
    return path


def empty(tmp, hdul, raw):
    path = tmp / "apStar-empty.fits"
    path.write_bytes(b"")
    return path


def corrupt_gzip(tmp, hdul, raw):
    data = bytearray(gzip.compress(raw))
    data[5000:5100] = b"\x00" * 100
    path = tmp / "apStar-corrupt.fits.gz"
    path.write_bytes(bytes(data))
    return path


def truncated_gzip(tmp, hdul, raw):
    path = tmp / "apStar-cut.fits.gz"
    path.write_bytes(gzip.compress(raw)[:4000])
    return path


def wrong_naxis1(tmp, hdul, raw):
    for k in (1, 2, 3):
        hdul[k].data = hdul[k].data[:, :8000]
    return _write(hdul, tmp / "apStar-naxis.fits")


def missing_wavelength_keywords(tmp, hdul, raw):
    for k in (0, 1, 2, 3):
        for key in ("CRVAL1", "CDELT1"):
            hdul[k].header.remove(key, ignore_missing=True)
    return _write(hdul, tmp / "apStar-nowave.fits")


def wrong_ctype(tmp, hdul, raw):
    hdul[1].header["CTYPE1"] = "LINEAR"
    return _write(hdul, tmp / "apStar-ctype.fits")


def wrong_crval(tmp, hdul, raw):
    hdul[1].header["CRVAL1"] = 4.18
    return _write(hdul, tmp / "apStar-crval.fits")


def missing_hdus(tmp, hdul, raw):
    return _write(fits.HDUList([hdul[0], hdul[1]]), tmp / "apStar-hdus.fits")


def empty_error_hdu(tmp, hdul, raw):
    hdul[2] = fits.ImageHDU(header=hdul[2].header.copy())
    hdul[2].data = None
    return _write(hdul, tmp / "apStar-noerr.fits")


def all_nan_flux(tmp, hdul, raw):
    hdul[1].data[:] = np.nan
    return _write(hdul, tmp / "apStar-nan.fits")


def negative_errors(tmp, hdul, raw):
    hdul[2].data[0, 1000:1010] = -1.0
    return _write(hdul, tmp / "apStar-negerr.fits")


def zero_errors(tmp, hdul, raw):
    hdul[2].data[:] = 0.0
    return _write(hdul, tmp / "apStar-zeroerr.fits")


def shape_mismatch(tmp, hdul, raw):
    hdul[2].data = hdul[2].data[:3]
    return _write(hdul, tmp / "apStar-shape.fits")


def unsupported_table(tmp, hdul, raw):
    table = fits.BinTableHDU.from_columns([fits.Column(name="APOGEE_ID", format="18A", array=np.array(["2M0"]))])
    return _write(fits.HDUList([fits.PrimaryHDU(), table]), tmp / "allStar-like.fits")


def table_instead_of_image(tmp, hdul, raw):
    table = fits.BinTableHDU.from_columns([fits.Column(name="FLUX", format="D", array=np.ones(3))])
    return _write(fits.HDUList([hdul[0], table, hdul[2], hdul[3]]), tmp / "apStar-table.fits")


def missing_file(tmp, hdul, raw):
    return tmp / "apStar-does-not-exist.fits"


def apvisit_without_rv(tmp, hdul, raw):
    from .conftest import DATA

    with fits.open(DATA / "apVisit-r13-5095-55844-128.fits.gz") as visit:
        visit = fits.HDUList([h.copy() for h in visit])
    for key in ("VRAD", "VREL"):
        visit[0].header.remove(key, ignore_missing=True)
    return _write(visit, tmp / "apVisit-norv.fits")


CASES = {
    "truncated FITS": (truncated_fits, errors.CorruptFileError, "truncated"),
    "truncated FITS on a block boundary": (truncated_on_block, errors.CorruptFileError, "damaged FITS"),
    "not FITS": (not_fits, errors.NotFITSError, "expected 'SIMPLE  ='"),
    "empty file": (empty, errors.NotFITSError, "empty file"),
    "corrupt gzip": (corrupt_gzip, errors.CorruptFileError, "gzip"),
    "truncated gzip": (truncated_gzip, errors.CorruptFileError, "gzip"),
    "wrong NAXIS1": (wrong_naxis1, errors.GridError, "NAXIS1 is 8000; expected 8575"),
    "missing wavelength keywords": (missing_wavelength_keywords, errors.HeaderError, "missing wavelength keyword"),
    "wrong CTYPE1": (wrong_ctype, errors.GridError, "expected 'LOG-LINEAR'"),
    "wrong CRVAL1": (wrong_crval, errors.GridError, "expected 4.179"),
    "missing HDUs": (missing_hdus, errors.MissingHDUError, "has 2 HDUs; expected at least 4"),
    "empty error HDU": (empty_error_hdu, errors.MissingHDUError, "HDU2 holds no data"),
    "all-NaN flux": (all_nan_flux, errors.BadValuesError, "no usable pixel"),
    "negative errors": (negative_errors, errors.BadValuesError, "negative errors"),
    "zero errors": (zero_errors, errors.BadValuesError, "no usable pixel"),
    "shape mismatch": (shape_mismatch, errors.ShapeMismatchError, "expected one shape"),
    "unsupported file type": (unsupported_table, errors.UnsupportedFileError, "expected an APOGEE apStar"),
    "table instead of image": (table_instead_of_image, errors.UnsupportedFileError, "expected a numeric image"),
    "missing file": (missing_file, errors.SpectrumFileNotFoundError, "no such file"),
    "apVisit without RV": (apvisit_without_rv, errors.HeaderError, "pass rv="),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_file_raises_a_named_fehkit_error(case, tmp_path, apstar_hdul, giant_bytes):
    build, error_type, words = CASES[case]
    path = build(tmp_path, apstar_hdul, giant_bytes)
    with pytest.raises(error_type) as info:
        read_apogee(path)
    err = info.value
    assert isinstance(err, FehkitError)
    assert str(path) in str(err), "the message names the file"
    assert words in str(err)
    assert "expected" in str(err) or "no such file" in str(err)


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_apogee(tmp_path / "apStar-nothing.fits")


def test_row_out_of_range(examples):
    with pytest.raises(errors.RowSelectionError, match=r"rows \[7\] requested; the file has rows 0-4"):
        read_apogee(examples[0], rows=[7])


def test_visits_requested_from_a_file_without_visit_rows(tmp_path, apstar_hdul):
    for k in (1, 2, 3):
        apstar_hdul[k].data = apstar_hdul[k].data[:2]
    path = _write(apstar_hdul, tmp_path / "apStar-novisits.fits")
    with pytest.raises(errors.RowSelectionError, match="NVISITS is 3 but the file has 2 rows"):
        read_apogee(path, rows="visits")


def test_skip_reads_the_good_files_and_reports_each_bad_one(tmp_path, apstar_hdul, giant_bytes, examples):
    bad = [build(tmp_path, apstar_hdul.copy(), giant_bytes) for build, _, _ in
           [CASES[c] for c in ("truncated FITS", "not FITS", "empty file", "all-NaN flux", "missing file")]]
    paths = [examples[0], *bad, examples[1]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = read_apogee(paths, on_error="skip")
    assert batch.meta["star_id"].tolist() == ["2M17335483-2753043", "2M19485057+5005279"]
    assert [p for p, _ in batch.skipped] == [str(p) for p in bad]
    assert all(str(p) in reason for p, reason in batch.skipped)
    assert sum(issubclass(w.category, FehkitWarning) for w in caught) == len(bad)


def test_skip_with_only_bad_files_raises(tmp_path):
    path = tmp_path / "apStar-empty.fits"
    path.write_bytes(b"")
    with pytest.warns(FehkitWarning), pytest.raises(FehkitError, match="none of the 1 files could be read"):
        read_apogee([path], on_error="skip")


def test_unknown_bad_bit_is_named():
    with pytest.raises(FehkitError, match="unknown APOGEE_PIXMASK bit 'BADPX'"):
        read_apogee([], bad_bits=["BADPX"])


# ---- FeHEnsemble.predict with features it cannot use: a FehkitError that says what is wrong ----------------------
@pytest.fixture(scope="module")
def small_model():
    """A one-member ensemble fitted in seconds on 60 synthetic stars, and the features of those stars."""
    from fehkit.models import FeHEnsemble
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params, spectra_features

    sim = make_benchmark(60, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = spectra_features(sim.batch, reference_params(sim.truth))
        ens = FeHEnsemble(members=("rf",), rf={"n_estimators": 10}, n_folds=3, seed=0).fit(
            feats, sim.truth["feh_ref"].to_numpy(float))
    return ens, feats


def test_predict_with_infinite_features_names_the_column(small_model):
    ens, feats = small_model
    frame = feats.frame()
    frame.loc[2, "teff"] = np.inf
    with pytest.raises(FehkitError) as info:
        ens.predict(frame)
    message = str(info.value)
    assert "teff" in message and ("inf" in message or "finite" in message), message


def test_predict_with_no_stars_is_clear(small_model):
    """An empty table: an empty result with the predict columns, or a FehkitError saying there are no stars."""
    ens, feats = small_model
    empty = feats.select(np.zeros(len(feats.X), bool))
    try:
        out = ens.predict(empty)
    except FehkitError as err:
        assert re.search(r"\b(0|no) (stars?|rows?)\b|empty", str(err)), str(err)
    else:
        assert len(out) == 0 and {"feh", "feh_err", "flag"} <= set(out.columns)


def test_predict_with_reordered_columns_says_the_order_differs(small_model):
    ens, feats = small_model
    frame = feats.frame()
    names = list(frame.columns)
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(FehkitError) as info:
        ens.predict(frame[swapped])
    message = str(info.value)
    assert "order" in message and "missing []" not in message, message
    assert "position" in message and names[0] in message and names[1] in message, message
