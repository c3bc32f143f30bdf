"""Saving and loading a trained :class:`~fehkit.models.ensemble.FeHEnsemble` without pickles.

A model folder holds one file per member in a format that cannot run code when read -- the forest as skops
(loaded with an explicit list of trusted scikit-learn types), the boosted trees as XGBoost JSON, the network's
weights and input scaling as safetensors -- and ``card.json``: the model card with the library versions, the feature
names, the training set's hash, the metrics, whether it was trained on synthetic or real data, the ensemble's
weights and error calibration, and the SHA-256 of every file. Loading checks each file against the card, so a
tampered or swapped file, a card from another version of the format, or features that do not match fail with a
clear error instead of a wrong [Fe/H].
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fehkit.errors import FehkitError
from fehkit.files import file_sha256, jsonable

#: Identifies a fehkit ensemble folder; bumped when the layout changes incompatibly.
FORMAT, FORMAT_VERSION = "fehkit-ensemble", 1
CARD = "card.json"
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


class ModelFileError(FehkitError):
    """A model folder cannot be read: missing, tampered with, or written by an incompatible version."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


class TamperedModelError(ModelFileError):
    """A file of the model folder does not match the SHA-256 recorded in its model card."""


class IncompatibleModelError(ModelFileError):
    """The model was written by another format version, or its parts do not fit together."""


def save_ensemble(ens: Any, directory: str | os.PathLike[str], *, card: Mapping[str, Any] | None = None,
                  overwrite: bool = False) -> Path:
    """Write a fitted ensemble to ``directory`` (created; replaced only with ``overwrite``).

    The folder is written beside the target under a temporary name and renamed when complete, so a crash never
    leaves half a model. ``card`` adds entries to the model card (``synthetic``, ``training_set_sha256``,
    ``metrics``, ...).
    """
    import torch
    from safetensors.torch import save_file
    from skops.io import dump

    ens._check_fitted()
    target = Path(directory)
    if target.exists() and not overwrite:
        raise ModelFileError(target, "already exists; pass overwrite=True (or --overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        files = {}
        for name in ens.members:
            path = tmp / FILES[name]
            est = ens.members_[name]
            if name == "rf":
                dump(est, path, compression=8)  # zipfile.ZIP_DEFLATED
            elif name == "xgb":
                est.save_model(path)
            else:
                tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in est.module_.state_dict().items()}
                tensors["x_mean"] = torch.as_tensor(est.x_mean_)
                tensors["x_scale"] = torch.as_tensor(est.x_scale_)
                tensors["missing_cols"] = torch.as_tensor(np.asarray(est.missing_cols_, np.int64))
                save_file(tensors, str(path), metadata={"format": FORMAT})
            files[FILES[name]] = file_sha256(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            "synthetic": None,
            "feature_names": list(ens.feature_names_),
            "ensemble": {
                "params": ens.get_params(),
                "weights": ens.weights_,
                "oof_mse": ens.oof_mse_,
                "calibration": ens.calibration_,
                "label_range": list(ens.label_range_),
                "n_train": getattr(ens, "n_train_", None),
                "member_params": {m: jsonable(ens.member_params(m)) for m in ens.members},
            },
            "dnn": ({"y_mean": ens.members_["dnn"].y_mean_, "y_scale": ens.members_["dnn"].y_scale_,
                     "n_features_in": int(ens.members_["dnn"].n_features_in_),
                     "n_epochs": int(ens.members_["dnn"].n_epochs_)} if "dnn" in ens.members else None),
            **jsonable(dict(card or {})),
            "files": files,
        }
        (tmp / CARD).write_text(json.dumps(meta, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp and safetensors make private files; give the usual permissions
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "model")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_card(directory: str | os.PathLike[str]) -> dict:
    """Read the model card of a model folder, after checking that it is one fehkit can read."""
    directory = Path(directory)
    path = directory / CARD
    if not path.is_file():
        raise ModelFileError(directory, f"no {CARD}; expected a model folder written by FeHEnsemble.save "
                                        "(or fehkit train / fehkit demo)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"is not valid JSON ({exc}); expected a fehkit model card") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise IncompatibleModelError(path, f"format {card.get('format') if isinstance(card, dict) else None!r}; "
                                           f"expected {FORMAT!r}")
    if card.get("format_version") != FORMAT_VERSION:
        raise IncompatibleModelError(path, f"format_version {card.get('format_version')!r}; this fehkit reads "
                                           f"version {FORMAT_VERSION}: retrain, or use the fehkit that wrote it "
                                           f"({card.get('versions', {}).get('fehkit', 'unknown')})")
    for key in ("feature_names", "ensemble", "files"):
        if key not in card:
            raise IncompatibleModelError(path, f"no {key!r} entry; expected a complete fehkit model card")
    return card


def load_ensemble(directory: str | os.PathLike[str], *, device: str = "cpu") -> Any:
    """Read a model folder written by :func:`save_ensemble`, verifying every file against its card."""
    import torch
    import xgboost
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from skops.io import get_untrusted_types, load

    from fehkit.models.ensemble import FeHEnsemble
    from fehkit.models.mlp import MLPRegressor, build_network

    directory = Path(directory)
    card = read_card(directory)
    e = card["ensemble"]
    members = tuple(e["params"]["members"])
    for name in members:
        fname = FILES.get(name)
        if fname is None:
            raise IncompatibleModelError(directory / CARD, f"unknown member {name!r}; expected rf, xgb or dnn")
        path = directory / fname
        if not path.is_file():
            raise ModelFileError(path, f"missing; the model card lists member {name!r} in this file")
        if card["files"].get(fname) != file_sha256(path):
            raise TamperedModelError(path, "SHA-256 differs from the one in card.json: the file was changed or "
                                           "replaced after the model was saved; refusing to load it")
    ens = FeHEnsemble(**{k: v for k, v in e["params"].items()})
    ens.feature_names_ = list(card["feature_names"])
    ens.weights_ = {k: float(v) for k, v in e["weights"].items()}
    ens.oof_mse_ = {k: float(v) for k, v in e["oof_mse"].items()}
    ens.calibration_ = dict(e["calibration"])
    ens.label_range_ = tuple(e["label_range"])
    ens.n_train_ = e.get("n_train")
    ens.card_ = card
    ens.members_ = {}
    n_feat = len(ens.feature_names_)
    for name in members:
        path = directory / FILES[name]
        if name == "rf":
            untrusted = get_untrusted_types(file=path)
            unexpected = [t for t in untrusted if t not in TRUSTED_SKOPS_TYPES]
            unexpected += sorted(t for t in _skops_types(path) if t not in FOREST_FILE_TYPES)
            if unexpected:
                raise TamperedModelError(path, f"contains types outside a random forest ({unexpected[:3]}); "
                                               "refusing to load them")
            try:
                est = load(path, trusted=[t for t in untrusted])
            except Exception as exc:  # noqa: BLE001 -- any failure here means the file does not fit this sklearn
                raise IncompatibleModelError(path, f"cannot be read by this scikit-learn ({exc}); the card says "
                                                   f"it was written with {card['versions'].get('scikit-learn')}") \
                    from None
        elif name == "xgb":
            est = xgboost.XGBRegressor()
            try:
                est.load_model(path)
            except xgboost.core.XGBoostError as exc:
                raise IncompatibleModelError(path, f"is not an XGBoost JSON model ({exc})") from None
        else:
            try:
                tensors = load_file(str(path))
            except SafetensorError as exc:
                raise IncompatibleModelError(path, f"is not a safetensors file ({exc})") from None
            d = card["dnn"]
            est = MLPRegressor(**{k: v for k, v in e["member_params"]["dnn"].items() if k != "seed"})
            est.x_mean_ = tensors["x_mean"].numpy()
            est.x_scale_ = tensors["x_scale"].numpy()
            est.missing_cols_ = tensors["missing_cols"].numpy()
            est.y_mean_, est.y_scale_ = float(d["y_mean"]), float(d["y_scale"])
            est.n_features_in_ = int(d["n_features_in"])
            est.n_epochs_ = int(d.get("n_epochs", 0))
            net = build_network(est._n_inputs(), est.hidden, est.dropout)
            try:
                net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
            except RuntimeError as exc:
                raise IncompatibleModelError(path, f"network weights do not fit the card's architecture "
                                                   f"{list(est.hidden)}: {str(exc).splitlines()[0]}") from None
            est.module_ = net.eval()
            est.to(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        n_in = getattr(est, "n_features_in_", n_feat)
        if name == "xgb":
            n_in = est.get_booster().num_features()
        if n_in != n_feat:
            raise IncompatibleModelError(path, f"expects {n_in} features; the card names {n_feat}")
        ens.members_[name] = est
    ens._check_fitted()
    return ens


#: Every type a forest's skops file may name (its schema), the forest itself at the top.
FOREST_FILE_TYPES = frozenset(TRUSTED_SKOPS_TYPES) | {"builtins.dict", "builtins.list", "builtins.str",
                                                     "builtins.tuple", "builtins.int", "builtins.float",
                                                     "builtins.bool", "builtins.NoneType", "numpy.ndarray"}


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
