"""The loss layers' ``param_str`` configs (``AMSoftmaxConfig``, ``LocalStructureConfig``,
``SmartMarginsConfig``), parsed by the project's config engine (``rmnet.config``); the data and
dropout layers keep theirs next to their code, and ``layers.registry`` maps every layer
class to its config for the generator's checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal



# --- the loss layers' configs -----------------------------------------------------------------

def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key!r} must be {rule}, got {value!r}")


def _check_common(num_classes: int, seed: int) -> None:
    _check(num_classes >= 2, "num_classes", ">= 2", num_classes)
    _check(seed >= 0, "seed", ">= 0", seed)


MARGIN_TERMS = ("push", "glob_push")


@dataclass(frozen=True)
class AMSoftmaxConfig:
    """param_str of ``AMSoftmaxLossLayer`` (paper eq. 2)."""
    num_classes: int
    scale: float = 30.0     # s: logits are s*cos (s*(cos - m) for the target class)
    margin: float = 0.35    # m: additive cosine margin
    seed: int = 0           # class-weight initialisation

    def __post_init__(self):
        _check_common(self.num_classes, self.seed)
        _check(self.scale > 0, "scale", "> 0", self.scale)
        _check(0 <= self.margin < 1, "margin", "in [0, 1)", self.margin)


@dataclass(frozen=True)
class SmartMarginsConfig:
    """The margin schedule of ``LocalStructureLossLayer`` (see layers.loss_math, "smart margins").

    margin(t) = start + (margin - start) * min(1, t / ramp_iters) for the terms listed in
    ``terms``, t = completed TRAIN iterations."""
    start: float = 0.15
    ramp_iters: int = 40000
    terms: list[str] = field(default_factory=lambda: list(MARGIN_TERMS))

    def __post_init__(self):
        _check(0 <= self.start < 1, "start", "in [0, 1)", self.start)
        _check(self.ramp_iters >= 0, "ramp_iters", ">= 0", self.ramp_iters)
        for term in self.terms:
            _check(term in MARGIN_TERMS, "terms",
                   f"a list of {list(MARGIN_TERMS)}", self.terms)
        _check(len(set(self.terms)) == len(self.terms), "terms",
               "a list without repeats", self.terms)


@dataclass(frozen=True)
class LocalStructureConfig:
    """param_str of ``LocalStructureLossLayer`` (paper eqs. 3-5, one set of class centres)."""
    num_classes: int
    center: bool = True
    push: bool = True
    glob_push: bool = True
    push_margin: float = 0.7
    glob_push_margin: float = 0.7
    smart_margins: SmartMarginsConfig | None = None   # null: constant margins
    reduction: Literal["active", "all"] = "active"    # how Push/GlobPush sums are normalised
    iter_size: int = 1      # the solver's iter_size: forwards per iteration, for the schedule
    seed: int = 0           # centre initialisation

    def __post_init__(self):
        _check_common(self.num_classes, self.seed)
        _check(0 <= self.push_margin < 1, "push_margin", "in [0, 1)", self.push_margin)
        _check(0 <= self.glob_push_margin < 1, "glob_push_margin", "in [0, 1)",
               self.glob_push_margin)
        _check(self.iter_size >= 1, "iter_size", ">= 1", self.iter_size)
        if not (self.center or self.push or self.glob_push):
            raise ValueError("'center', 'push' and 'glob_push' are all false: enable at least "
                             "one term (or leave the layer out of the net)")
        sm = self.smart_margins
        if sm is not None:
            for term in sm.terms:
                final = getattr(self, f"{term}_margin")
                if getattr(self, term):
                    _check(sm.start <= final, "smart_margins.start",
                           f"<= {term}_margin ({final}) (the schedule ramps up to it)", sm.start)

    def final_margin(self, term: str) -> float:
        return float(getattr(self, f"{term}_margin"))
