"""Variant configs: JSON files under generator/variants/, one per variant, with inheritance.

A variant file holds a partial config and usually ``"extends": "<other variant>"``; the
effective config is the chain merged from the root down (objects merge key by key, every other
value, lists included, replaces the inherited one). Files whose name starts with ``_`` (``_base``)
are abstract: they can be extended but are not variants of their own.

Every file is checked against SCHEMA on its own, before merging, so an unknown or misspelt key is
reported with the file it is in. The merged config is then checked as a whole (types, ranges,
cross-field rules). Errors are `ConfigError` with the file path in the message.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmnet.config import ConfigError

VARIANTS_DIR = Path(__file__).resolve().parent / "variants"


# A variant file that is missing, malformed or has a bad key/value raises ConfigError, the one
# config error of the project (rmnet.config); the message names the file.


# --- schema ----------------------------------------------------------------------------------
# A leaf is a tuple (checker, description). A dict is a section with fixed keys. FREE marks an
# object passed through unchecked (its keys belong to the Python layers that read it).

FREE = "free-form object"


def _int(lo: int | None = None):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
    return check, f"an integer{'' if lo is None else f' >= {lo}'}"


def _num(lo: float | None = None, hi: float | None = None, hi_open: bool = False,
         lo_open: bool = False):
    def check(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True
    lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
    hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
    return check, "a number " + " and ".join(s for s in (lo_s, hi_s) if s)


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _str():
    return (lambda v: isinstance(v, str)), "a string"


def _enum(*choices: str):
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _optional(leaf):
    check, desc = leaf
    return (lambda v: v is None or check(v)), f"null or {desc}"


def _str_list():
    return ((lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v)),
            "a list of non-empty strings")


def _stage_list():
    def check(v):
        if not isinstance(v, list) or not v:
            return False
        for s in v:
            if not isinstance(s, dict) or set(s) != {"channels", "blocks", "downsample"}:
                return False
            if not (_int(1)[0](s["channels"]) and _int(0)[0](s["blocks"])
                    and isinstance(s["downsample"], bool)):
                return False
        return True
    return check, ('a non-empty list of {"channels": int, "blocks": int (plain blocks), '
                   '"downsample": bool}')


SCHEMA: dict[str, Any] = {
    "extends": _str(),
    "description": _str(),
    "input": {"height": _int(1), "width": _int(1)},
    "backbone": {
        "stem_channels": _int(1),
        "squeeze_factor": _int(1),
        "stages": _stage_list(),
        "head_channels": _int(1),
        "embedding_size": _int(1),
    },
    "activation": _enum("elu", "relu"),
    "dropout": {
        "enabled": _bool(),
        "ratio": _num(0.0, 1.0, hi_open=True),
        "switch_off_iter": _optional(_int(0)),
    },
    "init": {"conv_variance_norm": _enum("FAN_IN", "FAN_OUT", "AVERAGE")},
    "num_classes": _int(2),
    "seed": _int(0),
    "deploy": {"output": _enum("embedding_calibrated", "embedding")},
    "losses": {
        "am_softmax": {"weight": _num(0.0, lo_open=True), "scale": _num(0.0, lo_open=True),
                       "margin": _num(0.0)},
        "center": {"enabled": _bool(), "weight": _num(0.0)},
        "push": {"enabled": _bool(), "weight": _num(0.0), "margin": _num(0.0)},
        "glob_push": {"enabled": _bool(), "weight": _num(0.0), "margin": _num(0.0)},
        "smart_margins": _optional(((lambda v: isinstance(v, dict)), "an object")),
    },
    "hsm": {"enabled": _bool(), "weighted": _bool(), "rank_with_push": _bool()},
    "batchnorm": {"use_global_stats": _bool(),
                  "moving_average_fraction": _num(0.0, 1.0, lo_open=True)},
    "freeze": {"iters": _int(0), "base_lr": _num(0.0, lo_open=True),
               "open_layers": _str_list()},
    "decay": {"iters": _int(0), "factor": _num(0.0, 1.0, lo_open=True, hi_open=True)},
    "data": FREE,
    "solver": {
        "base_lr": _num(0.0, lo_open=True),
        "gamma": _num(0.0, 1.0, lo_open=True),
        "stepsize": _int(1),
        "max_iter": _int(1),
        "momentum": _num(0.0, 1.0, hi_open=True),
        "weight_decay": _num(0.0),
        "iter_size": _int(1),
        "display": _int(0),
        "average_loss": _int(1),
        "snapshot": _int(0),
        "test_interval": _int(1),
        "test_iter": _int(1),
        "warmup_iters": _int(0),
    },
}

# Keys of the data dict that the generator fills in from other sections (one source of truth).
DERIVED_DATA_KEYS = {
    "height": "input.height",
    "width": "input.width",
    "num_classes": "num_classes",
    "mining": "hsm.enabled",
    "weighted": "hsm.weighted",
    "iter_size": "solver.iter_size",
}


def _check_keys(obj: Any, schema: Any, where: str, path: str) -> None:
    """Refuse keys the schema does not know, and wrong types for sections."""
    if schema is FREE:
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: '{path}' must be an object")
        return
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: '{path or '<top level>'}' must be an object")
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else key
            if key not in schema:
                known = ", ".join(sorted(schema))
                raise ConfigError(f"{where}: unknown key '{sub}' (known keys here: {known})")
            _check_keys(value, schema[key], where, sub)


def _check_values(obj: dict, schema: dict, where: str, path: str = "") -> None:
    """Every schema key present (the chain must define it somewhere) with a valid value."""
    for key, spec in schema.items():
        sub = f"{path}.{key}" if path else key
        if key in ("extends", "description") and not path:
            continue
        if key not in obj:
            raise ConfigError(f"{where}: '{sub}' is not set (neither in this file nor in the "
                              f"files it extends)")
        value = obj[key]
        if spec is FREE:
            continue
        if isinstance(spec, dict):
            _check_values(value, spec, where, sub)
            continue
        check, desc = spec
        if not check(value):
            raise ConfigError(f"{where}: '{sub}' must be {desc}, got {json.dumps(value)}")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Variant:
    """A variant's effective config, with the files it came from (root first)."""
    name: str
    config: dict
    files: tuple[Path, ...]

    @property
    def path(self) -> Path:
        return self.files[-1]


def variant_path(name: str, variants_dir: Path = VARIANTS_DIR) -> Path:
    return variants_dir / f"{name}.json"


def list_variants(variants_dir: Path = VARIANTS_DIR) -> list[str]:
    """Names of the concrete variants (files not starting with ``_``), sorted."""
    return sorted(p.stem for p in variants_dir.glob("*.json") if not p.stem.startswith("_"))


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such variant file") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                          f"{e.msg}") from None
    _check_partial(obj, str(path))
    return obj


def _check_partial(obj: dict, where: str) -> None:
    """Checks one file (or an overrides dict) on its own: known keys, no derived data keys."""
    _check_keys(obj, SCHEMA, where, "")
    data = obj.get("data", {})
    for key, source in DERIVED_DATA_KEYS.items():
        if key in data:
            raise ConfigError(f"{where}: 'data.{key}' is set by the generator from '{source}'; "
                              f"set it there instead")


def load_variant(name: str, variants_dir: Path = VARIANTS_DIR,
                 overrides: dict | None = None) -> Variant:
    """Read a variant and the chain it extends; merge and validate. Raises ConfigError.

    ``overrides`` (same shape as a variant file, no "extends") is merged last: for tests and
    one-off nets, e.g. ``{"data": {"root": "/path/to/Market-1501"}}``.
    """
    chain: list[tuple[Path, dict]] = []
    seen: list[str] = []
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ConfigError(f"{variant_path(name, variants_dir)}: 'extends' loops: "
                              + " -> ".join(seen + [current]))
        seen.append(current)
        path = variant_path(current, variants_dir)
        if not path.exists() and current != name:
            raise ConfigError(f"{chain[-1][0]}: extends '{current}', but {path} does not exist")
        obj = _read(path)
        chain.append((path, obj))
        current = obj.get("extends")
    merged: dict = {}
    for _, obj in reversed(chain):
        merged = _merge(merged, obj)
    merged.pop("extends", None)
    where = str(chain[0][0])
    if overrides:
        if "extends" in overrides:
            raise ConfigError(f"{where}: overrides cannot change 'extends'")
        _check_partial(overrides, f"{where} (overrides)")
        merged = _merge(merged, overrides)
        where = f"{where} (with overrides)"
    _check_values(merged, SCHEMA, where)
    _check_rules(merged, where)
    return Variant(name=name, config=merged, files=tuple(p for p, _ in reversed(chain)))


def _check_rules(cfg: dict, where: str) -> None:
    """Cross-field rules the per-key schema cannot express."""
    bb = cfg["backbone"]
    prev = bb["stem_channels"]
    for i, stage in enumerate(bb["stages"]):
        c = stage["channels"]
        if c % bb["squeeze_factor"]:
            raise ConfigError(f"{where}: backbone.stages[{i}].channels {c} is not divisible by "
                              f"squeeze_factor {bb['squeeze_factor']}")
        if not stage["downsample"] and c != prev:
            raise ConfigError(f"{where}: backbone.stages[{i}] changes the width {prev} -> {c} "
                              f"without a downsampling block (identity shortcut needs equal "
                              f"widths); set \"downsample\": true")
        prev = c
    losses = cfg["losses"]
    if losses["smart_margins"] is not None and not (losses["push"]["enabled"]
                                                    or losses["glob_push"]["enabled"]):
        raise ConfigError(f"{where}: losses.smart_margins is set but neither push nor glob_push "
                          f"is enabled (smart margins act on the push margins)")
    hsm = cfg["hsm"]
    if hsm["weighted"] and not hsm["enabled"]:
        raise ConfigError(f"{where}: hsm.weighted is true but hsm.enabled is false")
    solver, dropout = cfg["solver"], cfg["dropout"]
    if (dropout["enabled"] and dropout["switch_off_iter"] is not None
            and dropout["switch_off_iter"] > solver["max_iter"]):
        raise ConfigError(f"{where}: dropout.switch_off_iter {dropout['switch_off_iter']} is "
                          f"after solver.max_iter {solver['max_iter']}: dropout would never be "
                          f"switched off")
    if solver["warmup_iters"] > solver["max_iter"]:
        raise ConfigError(f"{where}: solver.warmup_iters {solver['warmup_iters']} is after "
                          f"solver.max_iter {solver['max_iter']}")
    if "root" not in cfg["data"]:
        raise ConfigError(f"{where}: data.root (the Market-1501 folder) is not set")
