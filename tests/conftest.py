"""Shared fixtures: the packaged real DR17 files, a factory of apStar-like files to break on purpose, a small model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from fehkit.examples import example_paths

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def examples() -> list[Path]:
    return example_paths()


@pytest.fixture(scope="session")
def giant_bytes(examples) -> bytes:
    """Uncompressed bytes of the real 3-visit giant's apStar file."""
    return gzip.decompress(examples[0].read_bytes())


@pytest.fixture
def apstar_hdul(giant_bytes):
    """A fresh, fully loaded copy of the real apStar HDUList, to modify and write."""
    import io

    hdul = fits.open(io.BytesIO(giant_bytes), memmap=False)
    for hdu in hdul:
        _ = hdu.data
    return hdul


@pytest.fixture
def apvisit_path() -> Path:
    return DATA / "apVisit-r13-5095-55844-128.fits.gz"


def make_aspcapstar(path: Path, flux: np.ndarray, err: np.ndarray, apogee_id: str = "2M00000000+0000000") -> Path:
    """Write a file laid out like a DR17 aspcapStar (HDU1 normalized flux, HDU2 error, HDU3 best fit, HDU4 table)."""
    header = fits.Header()
    for key, value in (("CRVAL1", 4.179), ("CDELT1", 6e-6), ("CRPIX1", 1), ("CTYPE1", "LOG-LINEAR")):
        header[key] = value
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="APOGEE_ID", format="18A", array=np.array([apogee_id])),
            fits.Column(name="TEFF", format="E", array=np.array([4800.0])),
            fits.Column(name="LOGG", format="E", array=np.array([1.5])),
            fits.Column(name="M_H", format="E", array=np.array([-2.0])),
            fits.Column(name="VMICRO", format="E", array=np.array([1.8])),
            fits.Column(name="SNR", format="E", array=np.array([120.0])),
            fits.Column(name="ASPCAPFLAG", format="K", array=np.array([0])),
        ]
    )
    table.header["COMMENT"] = "ASPCAPFLAG"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(flux.astype(np.float32), header=header),
            fits.ImageHDU(err.astype(np.float32), header=header),
            fits.ImageHDU(flux.astype(np.float32), header=header),
            table,
        ]
    ).writeto(path)
    return path


def fit_small_ensemble(n_stars: int, bench_seed: int, settings: dict, seed: int, path: Path, card: dict):
    """Train an ensemble (``settings``, ``seed``) on ``make_benchmark(n_stars, seed=bench_seed)``'s SYNTHETIC stars.

    Saves it to ``path`` with ``card``; returns the ensemble, the path and the training features.
    """
    from fehkit.models.ensemble import FeHEnsemble
    from fehkit.synth import make_benchmark
    from fehkit.training import reference_params, spectra_features
    from tests.test_infer import _quiet

    train = make_benchmark(n_stars, seed=bench_seed)
    feats = _quiet(spectra_features, train.batch, reference_params(train.truth))
    ens = FeHEnsemble(**settings, seed=seed).fit(feats, train.truth["feh_ref"].to_numpy(float))
    ens.save(path, card=card)
    return ens, path, feats


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A small ensemble trained once on 200 SYNTHETIC stars (make_benchmark seed 31) and its saved folder."""
    from tests.test_infer import SMALL

    ens, path, _ = fit_small_ensemble(200, 31, SMALL, 1, tmp_path_factory.mktemp("small-model") / "model",
                                      {"synthetic": True, "training_data": "200 synthetic stars (make_benchmark "
                                                                           "seed 31)"})
    return ens, path
