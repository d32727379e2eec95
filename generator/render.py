"""Render a variant's train/test/deploy nets: Jinja2 templates -> checked, canonical prototxt.

Every rendered text is parsed with Caffe's own ``caffe_pb2.NetParameter`` (text_format) before
anything is written: a typo, an unknown field or a bad enum fails here. To say *where* it came
from, the template loader appends a comment ``#@<template>:<line>`` to every template line that
produces output; the parse error's line in the rendered text then names the template line.
Comments vanish in the canonical form (the parsed proto re-serialised by text_format), so the
output is stable and deterministic.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import jinja2
from google.protobuf import text_format

from generator.config import Variant, load_variant
from layers.loss_math import LOCAL_TERMS
from generator.plan import Plan, build_plan

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PHASES = ("train", "test", "deploy")
OUTPUTS = ("embedding_calibrated", "embedding")
_MARK = re.compile(r"#@([^\s:]+):(\d+)")


class GenerationError(RuntimeError):
    """A template failed to render or rendered something Caffe cannot parse."""


# --- template loading with source-line marks ---------------------------------------------

def annotate(source: str, template: str) -> str:
    """Append ``  #@template:line`` to each line that outputs text (not pure tag/comment lines).

    Line numbers are unchanged (nothing is inserted), so Jinja's own errors stay right too.
    """
    out = []
    closer: str | None = None   # inside a multi-line {% %} or {# #}: the closing token
    for number, line in enumerate(source.split("\n"), start=1):
        rest = line
        if closer is not None:
            end = rest.find(closer)
            if end < 0:
                out.append(line)
                continue
            rest, closer = rest[end + 2:], None
        rest = re.sub(r"\{%.*?%\}|\{#.*?#\}", "", rest)
        opened = re.search(r"\{([%#])", rest)
        if opened:
            closer = "%}" if opened.group(1) == "%" else "#}"
            rest = rest[: opened.start()]
        out.append(f"{line}  #@{template}:{number}" if rest.strip() else line)
    return "\n".join(out)


class _MarkingLoader(jinja2.FileSystemLoader):
    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        return annotate(source, template), filename, uptodate


def _param_str(obj) -> str:
    """A JSON object as a prototxt string literal (for python_param.param_str)."""
    text = json.dumps(obj, sort_keys=True)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fail(message: str):
    raise GenerationError(message)


@functools.lru_cache(maxsize=8)
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(loader=_MarkingLoader(str(templates_dir)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["param_str"] = _param_str
    env.globals["fail"] = _fail
    env.globals.update(layer_training(None, freeze=False))   # every layer trained as usual
    return env


# --- which layers train: the freeze stage and kept BatchNorm statistics --------------------

def is_open(name: str, open_layers: list[str]) -> bool:
    """Whether layer ``name`` trains during the freeze stage: it matches one of the
    ``freeze.open_layers`` patterns (fnmatch, e.g. ``loss/*``), as torchreid's ``open_layers``
    names the modules trained while the backbone is fixed."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in open_layers)


CAFFE_BN_FRACTION = 0.999


def layer_training(cfg: dict | None, freeze: bool, deploy: bool = False) -> dict:
    """The template functions ``lr(layer)`` (its lr_mult) and ``global_stats(layer)`` (whether a
    BatchNorm uses its stored statistics in training). In the freeze stage (``freeze``: the
    train net of the first fine-tuning stage, fast-reid's FREEZE_ITERS) every layer not in
    ``freeze.open_layers`` gets lr_mult 0 and stored BatchNorm statistics, so nothing of it
    changes (torchreid puts the fixed modules in eval mode for the same reason); otherwise every
    layer trains, and BatchNorm keeps its stored statistics when
    ``batchnorm.use_global_stats`` says so (a short fine-tuning on few identities).
    ``bn_fraction(layer)``: ``batchnorm.moving_average_fraction`` (how much of its running
    statistics a BatchNorm keeps each iteration: 0.999 remembers about 1000 iterations, which lag
    behind weights that change fast in a short run from scratch)."""
    keep = bool(cfg and cfg["batchnorm"]["use_global_stats"])
    open_layers = cfg["freeze"]["open_layers"] if cfg else []

    def lr(name: str, mult: int = 1) -> int:
        return 0 if freeze and not is_open(name, open_layers) else mult

    def global_stats(name: str) -> bool:
        return keep or (freeze and not is_open(name, open_layers))

    # Caffe's default moving_average_fraction; another value is written only where it differs,
    # so nets rendered before the knob existed stay byte for byte the same.
    # A deploy net never trains, so it keeps the default.
    fraction = (cfg["batchnorm"]["moving_average_fraction"] if cfg and not deploy
                else CAFFE_BN_FRACTION)

    def bn_fraction(name: str) -> float | None:
        """The moving_average_fraction a training BatchNorm writes, None for Caffe's default
        (or a layer on stored statistics, which keeps no running average)."""
        return None if global_stats(name) or fraction == CAFFE_BN_FRACTION else fraction

    return {"lr": lr, "global_stats": global_stats, "bn_fraction": bn_fraction}


# --- what the training parts need, derived from the config ---------------------------------

def training_context(cfg: dict) -> dict:
    """Values the train/test templates need that are derived from several config sections."""
    losses, hsm = cfg["losses"], cfg["hsm"]
    local = any(losses[t]["enabled"] for t in ("center", "push", "glob_push"))
    data_params = dict(cfg["data"])
    data_params.update(height=cfg["input"]["height"], width=cfg["input"]["width"],
                       num_classes=cfg["num_classes"], mining=hsm["enabled"],
                       weighted=hsm["weighted"], iter_size=cfg["solver"]["iter_size"])
    am_blob, local_blob = "loss/am_softmax/per_sample", "loss/local/per_sample"
    if hsm["weighted"] and local:
        # Columns: AM-Softmax, then loss/local/per_sample's LOCAL_TERMS, each weighted by its
        # loss weight (paper eq. 6); disabled terms 0; Push only with rank_with_push (the
        # paper's step b ranks by w1*L_glob + w2*L_center + w3*L_gpush).
        def w(term: str) -> float:
            ranked = losses[term]["enabled"] and (term != "push" or hsm["rank_with_push"])
            return losses[term]["weight"] if ranked else 0.0
        feedback_blobs = [am_blob, local_blob]
        feedback_weights = [losses["am_softmax"]["weight"]] + [w(t) for t in LOCAL_TERMS]
    else:
        # Plain HSM (Table 2 "+ HSM"): samples ranked by the AM-Softmax loss alone.
        feedback_blobs = [am_blob]
        feedback_weights = [losses["am_softmax"]["weight"]]
    per_sample = [am_blob] + ([local_blob] if local else [])
    train_used = (set(feedback_blobs) | {"sample_id"}) if hsm["enabled"] else set()
    train_silenced = [b for b in ["sample_id"] + per_sample if b not in train_used]
    return {
        "data_params": data_params,
        "local_losses": local,
        "seeds": {"am_softmax": cfg["seed"], "local": cfg["seed"] + 1},
        "feedback_blobs": feedback_blobs,
        "feedback_weights": feedback_weights,
        "train_silenced": train_silenced,
        "test_silenced": ["sample_id"] + per_sample,
    }


# --- rendering -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderedNet:
    variant: str
    phase: str
    text: str        # canonical prototxt, with a header comment
    net: object      # caffe_pb2.NetParameter
    plan: Plan


def _template_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if not frames:
        return "template (unknown line)"
    f = frames[-1]
    return f"{Path(f.filename).name} line {f.lineno}"


def _source_of(rendered: str, line: int) -> str:
    lines = rendered.split("\n")
    if 1 <= line <= len(lines):
        m = _MARK.search(lines[line - 1])
        if m:
            return f"{m.group(1)} line {m.group(2)}"
    return "an unmarked template line"


def parse_checked(rendered: str, what: str):
    """Parse with caffe_pb2 and check the graph's wiring; errors name the template line."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(rendered, net)
    except text_format.ParseError as e:
        line = e.GetLine() or 0
        bad = rendered.split("\n")[line - 1].split("#@")[0].strip() if line else ""
        raise GenerationError(f"{what}: Caffe's NetParameter rejects the output of "
                              f"{_source_of(rendered, line)} ({bad!r}): {e}") from None
    _check_wiring(net, rendered, what)
    _check_param_strs(net, rendered, what)
    return net


def _check_param_strs(net, rendered: str, what: str) -> None:
    """Every Python layer is one of the project's, and its param_str parses with the dataclass
    that layer parses it with at run time (``layers.registry``)."""
    from rmnet.config import ConfigError, parse_config
    from layers.registry import PARAM_CONFIGS, config_class

    for layer in net.layer:
        if layer.type != "Python":
            continue
        pp = layer.python_param
        cls = config_class(pp.module, pp.layer)
        where = f"{what}: layer {layer.name!r} (from {_layer_source(rendered, layer.name)})"
        if cls is None:
            known = ", ".join(f"{m}.{c}" for m, c in PARAM_CONFIGS)
            raise GenerationError(f"{where}: Python layer {pp.module}.{pp.layer} is not one of "
                                  f"this project's ({known})")
        try:
            parse_config(cls, pp.param_str, f"{where}: {pp.layer}")
        except ConfigError as e:
            raise GenerationError(str(e)) from None


def _layer_source(rendered: str, name: str) -> str:
    needle = f'name: "{name}"'
    for number, line in enumerate(rendered.split("\n"), start=1):
        if needle in line:
            return _source_of(rendered, number)
    return "an unknown template line"


def _check_wiring(net, rendered: str, what: str) -> None:
    """Unique layer names; every bottom produced by an earlier layer."""
    seen_names: set[str] = set()
    blobs: set[str] = set()
    for layer in net.layer:
        if layer.name in seen_names:
            raise GenerationError(f"{what}: layer name {layer.name!r} used twice (second from "
                                  f"{_layer_source(rendered, layer.name)})")
        seen_names.add(layer.name)
        for bottom in layer.bottom:
            if bottom not in blobs:
                raise GenerationError(f"{what}: layer {layer.name!r} (from "
                                      f"{_layer_source(rendered, layer.name)}) reads blob "
                                      f"{bottom!r}, which no earlier layer produces")
        blobs.update(layer.top)


def header(variant: Variant, phase: str, output: str | None) -> str:
    chain = " <- ".join(p.name for p in reversed(variant.files))
    lines = [f"# RMNet {phase} net of variant '{variant.name}' ({chain}).",
             "# Generated by `python -m generator` from generator/templates and "
             "generator/variants; do not edit by hand."]
    if output:
        lines.append(f"# Output blob: {output}.")
    return "\n".join(lines) + "\n"


def render(variant: str | Variant, phase: str, *, deploy_output: str | None = None,
           overrides: dict | None = None, templates_dir: Path = TEMPLATES_DIR,
           freeze: bool = False) -> RenderedNet:
    """Render one net of a variant; GenerationError if the templates produce anything Caffe
    would not parse. ``deploy_output`` (deploy only) overrides the variant's deploy.output;
    ``overrides`` is merged into the variant's config (see config.load_variant). ``freeze``
    (train only): the freeze-stage train net, every layer but ``freeze.open_layers`` fixed and
    without dropout (``layer_training``)."""
    if isinstance(variant, str):
        variant = load_variant(variant, overrides=overrides)
    elif overrides:
        raise ValueError("overrides apply when the variant is given by name")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    cfg = variant.config
    output = None
    if phase == "deploy":
        output = deploy_output or cfg["deploy"]["output"]
        if output not in OUTPUTS:
            raise ValueError(f"deploy output must be one of {OUTPUTS}, got {output!r}")
    elif deploy_output is not None:
        raise ValueError("deploy_output applies to the deploy net only")
    if freeze and phase != "train":
        raise ValueError("freeze applies to the train net only")
    plan = build_plan(cfg, where=str(variant.path))
    what = f"variant {variant.name!r} ({variant.path}), {phase} net" + (" (freeze stage)"
                                                                        if freeze else "")
    if freeze:   # the fixed backbone runs as in evaluation: no dropout
        cfg = dict(cfg, dropout=dict(cfg["dropout"], enabled=False))
    context = {
        "net_name": f"rmnet_{variant.name}_{phase}" + ("_freeze" if freeze else ""),
        **layer_training(cfg, freeze, deploy=phase == "deploy"),
        "cfg": cfg,
        "plan": plan,
        "training": training_context(cfg),
        "deploy_output": output,
        # The solver's iter_size, for the layers that count iterations (dropout switch-off,
        # smart-margin ramp): they see iter_size forward passes per solver iteration.
        "solver_iter_size": cfg["solver"]["iter_size"],
    }
    try:
        template = environment(templates_dir).get_template(f"{phase}.prototxt.j2")
        rendered = template.render(**context)
    except GenerationError as e:
        raise GenerationError(f"{what}: {e}") from None
    except jinja2.TemplateSyntaxError as e:
        raise GenerationError(f"{what}: template syntax error in {e.name} line {e.lineno}: "
                              f"{e.message}") from None
    except jinja2.UndefinedError as e:
        raise GenerationError(f"{what}: {_template_frame(e)}: {e.message}") from None
    net = parse_checked(rendered, what)
    text = header(variant, phase, output) + text_format.MessageToString(net, as_utf8=True)
    return RenderedNet(variant=variant.name, phase=phase, text=text, net=net, plan=plan)


# --- solver ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderedSolver:
    variant: str
    text: str        # canonical solver prototxt, with a header comment
    solver: object   # caffe_pb2.SolverParameter


def render_solver(variant: str | Variant, *, net_dir: str | None = None,
                  snapshot_prefix: str | None = None, overrides: dict | None = None,
                  templates_dir: Path = TEMPLATES_DIR, freeze: bool = False,
                  decay: bool = False) -> RenderedSolver:
    """Render a variant's solver. ``net_dir`` is where its train/test nets are, as a path the
    ``caffe train`` command will resolve (default ``prototxt/<variant>``, relative to the repo
    root, as in the committed files);
    ``snapshot_prefix`` defaults to ``snapshots/<variant>``. ``freeze``: the freeze stage's
    solver (train net ``train_freeze.prototxt``, ``freeze.iters`` iterations at the fixed
    ``freeze.base_lr``, one snapshot at its end, prefix ``<variant>_freeze``). ``decay``: the
    decay stage's solver (the train net ``train.prototxt``, ``decay.iters`` iterations at the
    fixed ``solver.base_lr`` x ``decay.factor``, snapshots every ``solver.snapshot``, prefix
    ``<variant>_decay``), run from the all-layers stage's last caffemodel."""
    from caffe.proto import caffe_pb2

    if isinstance(variant, str):
        variant = load_variant(variant, overrides=overrides)
    elif overrides:
        raise ValueError("overrides apply when the variant is given by name")
    cfg = variant.config
    what = f"variant {variant.name!r} ({variant.path}), solver"
    net_dir = (net_dir or f"prototxt/{variant.name}").rstrip("/")
    if freeze and not cfg["freeze"]["iters"]:
        raise GenerationError(f"{what}: a freeze-stage solver needs freeze.iters > 0")
    if decay and (freeze or not cfg["decay"]["iters"]):
        raise GenerationError(f"{what}: a decay-stage solver needs decay.iters > 0 (and is not "
                              f"the freeze stage)")
    prefix = snapshot_prefix or f"snapshots/{variant.name}"
    context = {
        "s": cfg["solver"],
        "f": cfg["freeze"],
        "freeze": freeze,
        "d": cfg["decay"],
        "decay": decay,
        "seed": cfg["seed"],
        "train_net": f"{net_dir}/train{'_freeze' if freeze else ''}.prototxt",
        "test_net": f"{net_dir}/test.prototxt",
        "snapshot_prefix": prefix + ("_freeze" if freeze else "_decay" if decay else ""),
    }
    try:
        rendered = environment(templates_dir).get_template("solver.prototxt.j2").render(**context)
    except jinja2.TemplateError as e:
        raise GenerationError(f"{what}: {e}") from None
    solver = caffe_pb2.SolverParameter()
    try:
        text_format.Parse(rendered, solver)
    except text_format.ParseError as e:
        line = e.GetLine() or 0
        raise GenerationError(f"{what}: Caffe's SolverParameter rejects the output of "
                              f"{_source_of(rendered, line)}: {e}") from None
    chain = " <- ".join(p.name for p in reversed(variant.files))
    head = (f"# RMNet solver of variant '{variant.name}' ({chain}).\n"
            "# Generated by `python -m generator` from generator/templates and "
            "generator/variants; do not edit by hand.\n"
            "# Run from the repository root: caffe train -solver <this file> "
            "[-weights init.caffemodel | -snapshot <.solverstate>]\n")
    return RenderedSolver(variant.name, head + text_format.MessageToString(solver, as_utf8=True),
                          solver)
