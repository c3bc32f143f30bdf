"""Model folders: fitted members in formats that cannot run code, a model card, and a checksum of every file.

A model folder (format_version 2) holds

* one file per member -- the forest as skops (loaded with an explicit list of trusted scikit-learn types), the
  boosted trees as XGBoost JSON, the network's weights and input scaling as safetensors;
* ``card.json``: the model card -- format and version, library versions, ``members``, ``feature_names``,
  ``synthetic``, the ``ensemble`` section (its settings, weights, out-of-fold MSEs, error calibration, label range,
  the training ``domain``: parameter ranges and the feature-space distance, :mod:`fehkit.models.domain`),
  the network's scaling (``dnn``), whatever the caller adds (training-set hash, metrics, grid search) and the
  members' SHA-256 (``files``);
* ``checksums.sha256``: the SHA-256 of every other file, ``card.json`` included, in ``sha256sum`` format
  (``sha256sum -c checksums.sha256`` checks a folder by hand);
* ``.fehkit-output.json``: fehkit's marker (:data:`fehkit.files.MARKER`, written by
  :func:`~fehkit.files.atomic_folder` once the rest is complete). It says who wrote the folder and when, is not
  read when loading, and is neither listed nor required: without it a folder still loads.

Reading checks, in this order: the card's format and version; that the folder holds exactly the files
``checksums.sha256`` lists (plus the marker) and that each matches its SHA-256; the card's values (weights finite,
>= 0 and summing to 1; calibration scale and floor finite and > 0, the floor >= floor_min; members, feature names,
label range, training domain, ...); that each member file fits the card. A changed, missing, extra or swapped file,
or a card from another format version, fails with :class:`TamperedModelError`, :class:`ModelFileError` or
:class:`IncompatibleModelError` naming the file and the key, instead of giving a wrong [Fe/H]. The checksums catch
an edit or a corrupted copy; they are not a signature -- whoever can rewrite every file can rewrite
``checksums.sha256`` too.

This module knows the files and the card, not :class:`~fehkit.models.ensemble.FeHEnsemble`, whose ``save`` and
``load`` call :func:`write_model_folder` and :func:`read_model_folder`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fehkit.errors import FehkitError
from fehkit.files import MARKER, atomic_folder, file_sha256, give_usual_permissions, is_fehkit_folder
from fehkit.models.base import MEMBERS
from fehkit.models.domain import check_domain
from fehkit.models.mlp import TorchMLPRegressor, build_network

#: Identifies a fehkit model folder; the version is bumped when the layout changes incompatibly (2: every file of
#: the folder in ``checksums.sha256``, members and the network's settings in the card).
FORMAT, FORMAT_VERSION = "fehkit-ensemble", 2
CARD = "card.json"
CHECKSUMS = "checksums.sha256"
#: Each member's file.
FILES = {"rf": "rf.skops", "xgb": "xgb.json", "dnn": "dnn.safetensors"}

#: The only types the forest file may contain (checked by skops before anything is built).
TRUSTED_SKOPS_TYPES = (
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    "numpy.random.mtrand.RandomState",
    "numpy.random._mt19937.MT19937",
    "numpy.random._pickle.__randomstate_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    "builtins.slice",
)

#: Every type a forest's skops file may name (its schema), the forest itself at the top.
FOREST_FILE_TYPES = frozenset(TRUSTED_SKOPS_TYPES) | {"builtins.dict", "builtins.list", "builtins.str",
                                                     "builtins.tuple", "builtins.int", "builtins.float",
                                                     "builtins.bool", "builtins.NoneType", "numpy.ndarray"}


class ModelFileError(FehkitError):
    """A model folder cannot be read: missing, tampered with, or written by an incompatible version."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


class TamperedModelError(ModelFileError):
    """A file of the model folder is not the one saved: changed, replaced, unlisted, or not a member's format."""


class IncompatibleModelError(ModelFileError):
    """The model was written by another format version, or its parts do not fit together."""


# ---- writing ---------------------------------------------------------------------------------------------------
def write_model_folder(directory: str | os.PathLike[str], members: Mapping[str, Any], card: Mapping[str, Any], *,
                       overwrite: bool = False) -> Path:
    """Write fitted members and a model card to ``directory`` (created; replaced only with ``overwrite``).

    ``members`` maps ``"rf"``, ``"xgb"``, ``"dnn"`` to a fitted forest, XGBoost regressor and
    :class:`~fehkit.models.mlp.TorchMLPRegressor`; ``card`` holds the card's entries (values JSON-able; numpy
    scalars and arrays are converted). The format, library versions, ``members``, the network's scaling and the
    files' SHA-256 are added here. The folder is written under a temporary name beside the target and renamed when
    complete (:func:`fehkit.files.atomic_folder`), so a crash never leaves half a model.
    """
    target = Path(directory)
    if target.exists() and not overwrite:
        raise ModelFileError(target, "already exists; pass overwrite=True (or --overwrite) to replace it")
    unknown = [m for m in members if m not in FILES]
    if unknown or not members:
        raise ModelFileError(target, f"members {list(members)}: expected a non-empty subset of {list(MEMBERS)}")
    if overwrite:
        _mark_old_model_folder(target)
    with atomic_folder(target, kind="model", overwrite=overwrite) as tmp:
        files = {FILES[m]: _write_member(m, est, tmp / FILES[m]) for m, est in members.items()}
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": _versions()}
        dnn = members.get("dnn")
        meta = {**header, **card, **header, "members": list(members),
                "dnn": None if dnn is None else {"params": dnn.get_params(), "y_mean": dnn.y_mean_,
                                                 "y_scale": dnn.y_scale_, "n_features_in": dnn.n_features_in_,
                                                 "n_epochs": dnn.n_epochs_},
                "files": files}
        (tmp / CARD).write_text(json.dumps(meta, indent=2, default=_plain) + "\n")
        # the members were hashed as they were written; only the card is new
        sums = {**files, CARD: file_sha256(tmp / CARD)}
        (tmp / CHECKSUMS).write_text("".join(f"{sums[name]}  {name}\n" for name in sorted(sums)))
        for f in tmp.iterdir():
            give_usual_permissions(f)  # safetensors makes private files
    return target


def _write_member(name: str, est: Any, path: Path) -> str:
    """Write one member in its safe format; return the file's SHA-256."""
    if name == "rf":
        from skops.io import dump

        dump(est, path, compression=8)  # zipfile.ZIP_DEFLATED
    elif name == "xgb":
        est.save_model(path)
    else:
        import torch
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in est.module_.state_dict().items()}
        tensors["x_mean"] = torch.as_tensor(est.x_mean_)
        tensors["x_scale"] = torch.as_tensor(est.x_scale_)
        tensors["missing_cols"] = torch.as_tensor(np.asarray(est.missing_cols_, np.int64))
        save_file(tensors, str(path), metadata={"format": FORMAT})
    return file_sha256(path)


def _mark_old_model_folder(target: Path) -> None:
    """Let ``overwrite`` replace a model folder without fehkit's marker (format_version 1 wrote none).

    Only a folder whose card says it is a fehkit model and that holds nothing but model files is marked;
    anything else is left for :func:`~fehkit.files.check_output_folder` to refuse.
    """
    if not target.is_dir() or is_fehkit_folder(target):
        return
    try:
        card = json.loads((target / CARD).read_text())
    except (OSError, ValueError):
        return
    if isinstance(card, dict) and card.get("format") == FORMAT and \
            {p.name for p in target.iterdir()} <= {CARD, CHECKSUMS, *FILES.values()}:
        (target / MARKER).write_text(json.dumps({"written_by": "fehkit", "kind": "model"}) + "\n")


# ---- reading ---------------------------------------------------------------------------------------------------
def read_card(directory: str | os.PathLike[str]) -> dict:
    """Read the model card of a model folder after checking every file of the folder and the card's values."""
    directory = Path(directory)
    path = directory / CARD
    if not path.is_file():
        raise ModelFileError(directory, f"no {CARD}; expected a model folder written by FeHEnsemble.save "
                                        "(or fehkit train / fehkit demo)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"is not valid JSON ({exc}); expected a fehkit model card") from None
    _check_format(card, path)
    listed = _verify_files(directory)
    _check_card(card, path)
    expected = {CARD, *card["files"]}
    for name in sorted(set(listed) - expected):
        raise TamperedModelError(directory / name, f"is not a file of this model (its members' files are "
                                                   f"{sorted(card['files'])}); refusing to load the folder")
    for name in sorted(expected - set(listed)):
        raise TamperedModelError(directory / name, f"not listed in {CHECKSUMS}; refusing to load the folder")
    for name, sha in card["files"].items():
        if listed[name] != sha:
            raise TamperedModelError(directory / name, f"the SHA-256 in {CARD} differs from the one in {CHECKSUMS}; "
                                                       "refusing to load it")
    return card


def read_model_folder(directory: str | os.PathLike[str], *, device: str = "cpu") -> tuple[dict[str, Any], dict]:
    """Read a folder written by :func:`write_model_folder`: ``(members by name, card)``, all checked first.

    ``device`` places the network (``"cpu"``, ``"cuda"``, ``"auto"``: CUDA when available).
    """
    directory = Path(directory)
    card = read_card(directory)
    n_feat = len(card["feature_names"])
    members = {}
    for name in card["members"]:
        path = directory / FILES[name]
        if name == "rf":
            est = _read_forest(path, card)
            n_in = est.n_features_in_
        elif name == "xgb":
            est = _read_boosting(path)
            n_in = est.get_booster().num_features()
        else:
            est = _read_network(path, card, device)
            n_in = est.n_features_in_
        if n_in != n_feat:
            raise IncompatibleModelError(path, f"expects {n_in} features; the card names {n_feat}")
        members[name] = est
    return members, card


def _check_format(card: Any, path: Path) -> None:
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise IncompatibleModelError(path, f"format {card.get('format') if isinstance(card, dict) else None!r}; "
                                           f"expected {FORMAT!r}")
    version = card.get("format_version")
    versions = card.get("versions")
    wrote = versions.get("fehkit", "unknown") if isinstance(versions, dict) else "unknown"
    if _is_number(version) and version < FORMAT_VERSION:
        raise IncompatibleModelError(path, f"format_version {version}: written by an older fehkit ({wrote}), "
                                           f"whose folders are not checked whole; this fehkit reads version "
                                           f"{FORMAT_VERSION}: retrain the model (fehkit train) and save it again")
    if version != FORMAT_VERSION:
        raise IncompatibleModelError(path, f"format_version {version!r}; this fehkit reads version "
                                           f"{FORMAT_VERSION}: retrain, or use the fehkit that wrote it ({wrote})")


def _verify_files(directory: Path) -> dict[str, str]:
    """Check that the folder holds exactly the files of ``checksums.sha256`` (and the marker), each unchanged."""
    path = directory / CHECKSUMS
    if not path.is_file():
        raise TamperedModelError(path, f"missing; a model folder of format_version {FORMAT_VERSION} lists the "
                                       "SHA-256 of each of its files there")
    listed: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        lines = ["<not text>"]
    for n, line in enumerate(lines, 1):
        m = re.fullmatch(r"([0-9a-f]{64})  ([^/\\]+)", line)
        if m is None or m[2] in listed or m[2] in (CHECKSUMS, MARKER, ".", ".."):
            raise TamperedModelError(path, f"line {n} is {line[:90]!r}; expected '<sha256>  <file name>', each "
                                           "file of the folder once")
        listed[m[2]] = m[1]
    present = {p.name for p in directory.iterdir()} - {CHECKSUMS, MARKER}
    for name in sorted(set(listed) - present):
        raise ModelFileError(directory / name, f"missing; {CHECKSUMS} lists it as part of the model")
    for name in sorted(present - set(listed)):
        raise TamperedModelError(directory / name, f"is not listed in {CHECKSUMS}: a model folder holds only the "
                                                   "files fehkit wrote; refusing to load it (remove the file, or "
                                                   "save the model again)")
    for name, sha in sorted(listed.items()):
        if not (directory / name).is_file() or file_sha256(directory / name) != sha:
            raise TamperedModelError(directory / name, f"SHA-256 differs from the one in {CHECKSUMS}: the file was "
                                                       "changed or replaced after the model was saved; refusing to "
                                                       "load it")
    return listed


def _check_card(card: dict, path: Path) -> None:
    """Check the values the model's predictions depend on; each failure names the key, the value, the expectation."""

    def bad(key: str, found: Any, expected: str) -> NoReturn:
        text = json.dumps(found, default=str)
        raise IncompatibleModelError(path, f"{key} = {text if len(text) <= 90 else text[:87] + '...'}; expected "
                                           f"{expected}")

    members = card.get("members")
    if not (isinstance(members, list) and members and all(isinstance(m, str) and m in FILES for m in members)
            and len(set(members)) == len(members)):
        bad("members", members, f"a non-empty list of distinct names out of {list(MEMBERS)}")
    files = card.get("files")
    if not (isinstance(files, dict) and set(files) == {FILES[m] for m in members}):
        bad("files", files, f"the SHA-256 of the members' files {sorted(FILES[m] for m in members)}")
    names = card.get("feature_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        bad("feature_names", names, "a non-empty list of distinct strings")
    if not isinstance(card.get("synthetic"), bool | None):
        bad("synthetic", card.get("synthetic"), "true (trained on simulated spectra), false, or null (not stated)")
    e = card.get("ensemble")
    if not isinstance(e, dict):
        bad("ensemble", e, "an object with params, weights, oof_mse, calibration and label_range")
    if not isinstance(e.get("params"), dict):
        bad("ensemble.params", e.get("params"), "an object of FeHEnsemble settings")
    weights = e.get("weights")
    if not (_numbers_for(weights, members) and all(v >= 0 for v in weights.values())
            and abs(sum(weights.values()) - 1) <= 1e-6):
        bad("ensemble.weights", weights, f"a finite weight >= 0 for each of {members}, summing to 1")
    oof = e.get("oof_mse")
    if not (_numbers_for(oof, members) and all(v > 0 for v in oof.values())):
        bad("ensemble.oof_mse", oof, f"a finite MSE > 0 for each of {members}")
    cal = e.get("calibration")
    for key in ("scale", "floor"):
        value = cal.get(key) if isinstance(cal, dict) else None
        if not (_is_number(value) and value > 0):
            bad(f"ensemble.calibration.{key}", value, "a finite number > 0")
    # the Student-t error model's keys (absent from models calibrated before it)
    for key, valid, what in (("tail_nu", lambda x: x > 2, "degrees of freedom > 2"),
                             ("err95_factor", lambda x: x > 0, "a factor > 0"),
                             ("floor_min", lambda x: x >= 0, "a finite number >= 0")):
        if key in cal and not (_is_number(cal[key]) and valid(cal[key])):
            bad(f"ensemble.calibration.{key}", cal[key], what)
    if _is_number(cal.get("floor_min")) and cal["floor"] < cal["floor_min"]:
        bad("ensemble.calibration.floor", cal["floor"], f"a floor >= floor_min ({cal['floor_min']})")
    lr = e.get("label_range")
    if not (isinstance(lr, list) and len(lr) == 2 and all(_is_number(v) for v in lr) and lr[0] <= lr[1]):
        bad("ensemble.label_range", lr, "two finite numbers, the lowest and the highest training label")
    problem = check_domain(e.get("domain"))
    if problem:
        bad("ensemble.domain", e.get("domain"), f"the training domain: {problem}")
    if "dnn" in members:
        d = card.get("dnn")
        if not (isinstance(d, dict) and isinstance(d.get("params"), dict)):
            bad("dnn", d, "an object with the network's params, y_mean, y_scale, n_features_in")
        if not _is_number(d.get("y_mean")):
            bad("dnn.y_mean", d.get("y_mean"), "a finite number")
        if not (_is_number(d.get("y_scale")) and d["y_scale"] > 0):
            bad("dnn.y_scale", d.get("y_scale"), "a finite number > 0")
        if not (isinstance(d.get("n_features_in"), int) and not isinstance(d["n_features_in"], bool)):
            bad("dnn.n_features_in", d.get("n_features_in"), "an integer")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _numbers_for(d: Any, keys: list[str]) -> bool:
    return isinstance(d, dict) and set(d) == set(keys) and all(_is_number(v) for v in d.values())


def _read_forest(path: Path, card: dict) -> Any:
    from skops.io import get_untrusted_types, load

    untrusted = get_untrusted_types(file=path)
    unexpected = [t for t in untrusted if t not in TRUSTED_SKOPS_TYPES]
    unexpected += sorted(t for t in _skops_types(path) if t not in FOREST_FILE_TYPES)
    if unexpected:
        raise TamperedModelError(path, f"contains types outside a random forest ({unexpected[:3]}); refusing to "
                                       "load them")
    try:
        return load(path, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001 -- any failure here means the file does not fit this sklearn
        raise IncompatibleModelError(path, f"cannot be read by this scikit-learn ({exc}); the card says it was "
                                           f"written with {card['versions'].get('scikit-learn')}") from None


def _read_boosting(path: Path) -> Any:
    import xgboost

    est = xgboost.XGBRegressor()
    try:
        est.load_model(path)
    except xgboost.core.XGBoostError as exc:
        raise IncompatibleModelError(path, f"is not an XGBoost JSON model ({exc})") from None
    return est


def _read_network(path: Path, card: dict, device: str) -> TorchMLPRegressor:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise IncompatibleModelError(path, f"is not a safetensors file ({exc})") from None
    d = card["dnn"]
    try:
        est = TorchMLPRegressor(**d["params"])
        est.x_mean_ = tensors["x_mean"].numpy()
        est.x_scale_ = tensors["x_scale"].numpy()
        est.missing_cols_ = tensors["missing_cols"].numpy()
        net = build_network(int(d["n_features_in"]) + len(est.missing_cols_), est.hidden, est.dropout)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise IncompatibleModelError(path, f"does not fit the card's network {d['params']} "
                                           f"({str(exc).splitlines()[0]})") from None
    est.y_mean_, est.y_scale_ = float(d["y_mean"]), float(d["y_scale"])
    est.n_features_in_ = int(d["n_features_in"])
    est.n_epochs_ = int(d.get("n_epochs") or 0)
    est.module_ = net.eval()
    return est.to(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def _skops_types(path: Path) -> set[str]:
    """Types named anywhere in a skops file's schema; a file whose top is not a random forest names a bad one."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            schema = json.loads(z.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        return {"<not a skops file>"}
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    top = f"{schema.get('__module__')}.{schema.get('__class__')}" if isinstance(schema, dict) else None
    if top != "sklearn.ensemble._forest.RandomForestRegressor":
        found.add(f"{top} (at the top; expected a RandomForestRegressor)")
    return found


def _plain(obj: Any) -> Any:
    """JSON for numpy scalars and arrays (``json.dumps(default=...)``)."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable; expected numbers, strings, lists, dicts")


def _versions() -> dict:
    import safetensors
    import sklearn
    import skops
    import torch
    import xgboost

    import fehkit

    return {"fehkit": fehkit.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__, "torch": torch.__version__,
            "skops": skops.__version__, "safetensors": safetensors.__version__}
