"""fehkit.threads: the compiled kernels split a batch over threads and give the same numbers as one thread."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fehkit.continuum import normalize
from fehkit.errors import FehkitWarning
from fehkit.ew import measure_ew
from fehkit.features import build_features
from fehkit.synth import make_benchmark
from fehkit.threads import THREADS_ENV, map_parts, n_threads
from fehkit.training import reference_params


def test_map_parts_covers_every_row_once_in_order(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    for n in (0, 1, 63, 64, 200, 1001):
        parts = map_parts(lambda s: (s.start, s.stop), n, min_rows=16, max_rows=100)
        rows = [i for a, b in parts for i in range(a, b)]
        assert rows == list(range(n))
        assert all(b - a <= 100 for a, b in parts)


def test_threads_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    assert n_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "0")
    assert n_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="FEHKIT_THREADS='many'"):
        n_threads()


def test_one_thread_and_several_give_the_same_numbers(monkeypatch):
    """Continuum, EWs and the classical method on 600 SYNTHETIC spectra: bit for bit with 1 and with 3 threads."""
    sim = make_benchmark(600, seed=44)
    params = reference_params(sim.truth)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv(THREADS_ENV, threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FehkitWarning)
            norm = normalize(sim.batch)
            ew = measure_ew(norm.batch, params=params[["teff", "logg", "vmic"]], mc_draws=0, chunk=128)
            feats = build_features(ew, params)
        out[threads] = (norm, ew, feats)
    (n1, e1, f1), (n3, e3, f3) = out["1"], out["3"]
    assert np.array_equal(n1.continuum, n3.continuum, equal_nan=True)
    pd.testing.assert_frame_equal(n1.diagnostics, n3.diagnostics)
    assert np.array_equal(e1.ew_mA, e3.ew_mA, equal_nan=True) and np.array_equal(e1.flag, e3.flag)
    assert np.array_equal(f1.X, f3.X, equal_nan=True)
    pd.testing.assert_frame_equal(f1.stars, f3.stars)


def test_a_shared_setting_is_changed_by_the_first_caller_and_undone_by_the_last():
    """Callers in several threads share one change; an error inside still undoes it; None means nothing to undo."""
    import threading

    from fehkit.threads import SharedSetting

    log = []
    setting = SharedSetting(lambda: log.append("change") or (lambda: log.append("undo")))
    inside, release = threading.Barrier(3), threading.Event()

    def hold():
        with setting():
            inside.wait()
            release.wait()

    workers = [threading.Thread(target=hold) for _ in range(2)]
    for w in workers:
        w.start()
    inside.wait()  # both threads inside at once
    assert log == ["change"]
    release.set()
    for w in workers:
        w.join()
    assert log == ["change", "undo"]
    with pytest.raises(RuntimeError), setting():
        raise RuntimeError("inside")
    assert log == ["change", "undo", "change", "undo"]
    with SharedSetting(lambda: None)():  # nothing to undo
        pass
