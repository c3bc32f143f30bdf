"""The packaged Fe I line list, and what load_linelist does with a broken one."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from specutils.utils.wcs_utils import vac_to_air

from fehkit.errors import LineListError
from fehkit.lines import (
    CHIP_MARGIN_A,
    REQUIRED_COLUMNS,
    WINDOW_HALF_WIDTH_PIX,
    air_to_vacuum,
    line_strength,
    line_window,
    load_linelist,
)
from fehkit.spectra import CHIPS, apstar_wavelength, chip_of

# The lines of the MOOG EW table in docs/information_limit.md: air wavelength (A), chi (eV), log gf.
REFERENCE_LINES = [
    (15207.53, 5.38, 0.231),
    (15294.56, 5.30, 0.622),
    (15395.72, 5.62, -0.261),
    (15621.65, 5.54, 0.468),
    (15769.42, 5.54, 0.604),
    (16040.66, 5.87, 0.247),
    (16486.67, 5.82, 0.708),
]


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    return load_linelist()


def test_the_list_holds_about_thirty_fe_i_lines_sorted_and_unique(lines):
    assert 25 <= len(lines) <= 35
    assert set(lines["species"]) == {"Fe I"}
    assert lines["wave_vac"].is_monotonic_increasing
    assert lines["wave_vac"].is_unique


def test_every_window_lies_on_one_chip_with_margin_for_the_radial_velocity(lines):
    for line in lines.itertuples():
        lo, hi = CHIPS[line.chip]
        assert lo + CHIP_MARGIN_A <= line.window_lo < line.wave_vac < line.window_hi <= hi - CHIP_MARGIN_A
        # ... so line and window are clear of the chip gaps as well
        assert set(chip_of([line.window_lo, line.wave_vac, line.window_hi])) == {line.chip}


def test_a_window_is_the_line_pixel_plus_minus_20_apstar_pixels(lines):
    wave = apstar_wavelength()
    for line in lines.itertuples():
        in_window = (wave >= line.window_lo) & (wave <= line.window_hi)
        assert in_window.sum() == 2 * WINDOW_HALF_WIDTH_PIX + 1
        nearest = np.argmin(np.abs(wave - line.wave_vac))
        assert wave[nearest - WINDOW_HALF_WIDTH_PIX] == pytest.approx(line.window_lo, abs=1e-3)
        assert wave[nearest + WINDOW_HALF_WIDTH_PIX] == pytest.approx(line.window_hi, abs=1e-3)


def test_windows_do_not_overlap(lines):
    assert (lines["window_hi"].to_numpy()[:-1] < lines["window_lo"].to_numpy()[1:]).all()


def test_vacuum_wavelengths_are_air_wavelengths_plus_the_refraction_of_air(lines):
    # n - 1 = 2.73e-4 in the H band: 4.16 A at 15,200 A, 4.55 A at 16,650 A.
    shift = lines["wave_vac"] - lines["wave_air"]
    assert ((shift > 4.1) & (shift < 4.6)).all()
    assert np.allclose(lines["wave_vac"], air_to_vacuum(lines["wave_air"].to_numpy()), atol=6e-4)


def test_air_to_vacuum_inverts_specutils_vac_to_air():
    wave_air = np.array([15207.526, 15800.0, 16953.6])
    back = vac_to_air(air_to_vacuum(wave_air) * u.AA, method="Morton2000").to_value(u.AA)
    assert np.allclose(back, wave_air, rtol=0, atol=1e-6)
    assert isinstance(air_to_vacuum(15207.526), float)


@pytest.mark.parametrize(("wave_air", "chi", "loggf"), REFERENCE_LINES)
def test_the_lines_of_the_moog_ew_table_are_in_the_list(lines, wave_air, chi, loggf):
    match = lines[(lines["wave_air"] - wave_air).abs() <= 0.005]
    assert len(match) == 1, f"Fe I {wave_air} (air) is not in the packaged list"
    assert match["chi"].iloc[0] == pytest.approx(chi, abs=0.005)
    assert match["loggf"].iloc[0] == pytest.approx(loggf, abs=5e-4)


def test_strength_is_the_curve_of_growth_index_of_a_4800_k_giant(lines):
    expected = line_strength(lines["loggf"], lines["chi"], teff=4800.0)
    assert np.allclose(lines["strength"], expected, atol=6e-4)
    # the strongest line of the table, Fe I 15294.56, is the strongest of the list
    assert lines.loc[lines["strength"].idxmax(), "wave_air"] == pytest.approx(15294.56, abs=0.005)


def test_every_window_falls_on_data_in_the_example_apstar_files(lines, examples):
    from astropy.io import fits

    paths = examples
    assert len(paths) == 2
    wave = apstar_wavelength()
    for path in paths:
        flux = np.atleast_2d(fits.getdata(path, ext=1))[0]
        for line in lines.itertuples():
            in_window = (wave >= line.window_lo) & (wave <= line.window_hi)
            good = np.isfinite(flux[in_window]).mean()
            assert good >= 0.95, f"{path}: window of Fe I {line.wave_vac:.3f} is {good:.0%} data"


# -- a user's line list ----------------------------------------------------------------------------------
def test_a_list_with_only_the_required_columns_loads_and_is_completed(tmp_path, lines):
    path = tmp_path / "mine.csv"
    lines[list(REQUIRED_COLUMNS)].iloc[::-1].to_csv(path, index=False)
    mine = load_linelist(path)
    assert mine["wave_vac"].is_monotonic_increasing
    assert (mine["chip"] == lines["chip"]).all()
    assert np.allclose(mine["strength"], lines["strength"], atol=6e-4)
    assert set(mine["source"]) == {"mine.csv"}


def test_a_list_without_loggf_is_refused_naming_the_file_and_column(tmp_path, lines):
    path = tmp_path / "no_loggf.csv"
    lines.drop(columns="loggf").to_csv(path, index=False)
    with pytest.raises(LineListError, match=r"no_loggf\.csv: missing column\(s\) 'loggf'"):
        load_linelist(path)


def test_a_window_that_misses_its_line_is_refused(tmp_path, lines):
    path = tmp_path / "shifted_window.csv"
    broken = lines.copy()
    broken.loc[3, "window_hi"] = broken.loc[3, "wave_vac"] - 0.5
    broken.to_csv(path, index=False)
    with pytest.raises(LineListError, match=r"shifted_window\.csv: columns 'window_lo'/'window_hi', row 4") as err:
        load_linelist(path)
    assert f"{lines.loc[3, 'wave_vac']:.3f} A" in str(err.value)


def test_a_non_numeric_value_is_reported_with_what_was_found(tmp_path, lines):
    path = tmp_path / "typo.csv"
    broken = lines.astype({"chi": object})
    broken.loc[0, "chi"] = "5.38eV"
    broken.to_csv(path, index=False)
    with pytest.raises(LineListError, match=r"typo\.csv: column 'chi', row 1 .*found '5\.38eV'"):
        load_linelist(path)


def test_a_species_fehkit_cannot_use_is_refused(tmp_path, lines):
    path = tmp_path / "ti.csv"
    broken = lines.copy()
    broken.loc[0, "species"] = "Ti I"
    broken.to_csv(path, index=False)
    with pytest.raises(LineListError, match=r"ti\.csv: column 'species', row 1 .*found 'Ti I'"):
        load_linelist(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(LineListError, match="nowhere.csv"):
        load_linelist(tmp_path / "nowhere.csv")


def test_line_window_matches_the_packaged_windows(lines):
    lo, hi = line_window(lines["wave_vac"].to_numpy())
    assert np.allclose(lo, lines["window_lo"], atol=1.5e-3)
    assert np.allclose(hi, lines["window_hi"], atol=1.5e-3)
