"""Backbone pre-training nets (paper V.ii: the backbone is first trained to classify object
crops, then the whole re-id schedule runs from it).

``render_pretrain(variant, num_classes=..., root=...)`` renders ``templates/pretrain.prototxt.j2``:
the classification data layer (``layers.classify``), the variant's backbone from the same
``blocks.j2`` macros as the re-id nets (so ``input_norm/*``, ``stem/*`` and every
``bottleneck*`` layer have the re-id nets' names and shapes and transfer by name), global max
pooling (``pretrain/pool``), BatchNorm + Scale on the pooled features (``pretrain/bn``,
``pretrain/scale``) and a linear classifier (``pretrain/classifier``) with softmax loss
and accuracy. The input size is the pre-training one (224x224 by default, any size the plan
accepts); convolution weights do not depend on it. No dropout and no re-id head: those start
from their initialisation in the re-id run.

``write_pretrain_run(run_dir, ...)`` writes ``pretrain.prototxt`` and ``solver.prototxt``
(``templates/pretrain_solver.prototxt.j2``: SGD, the variant's momentum and weight decay,
lr x0.1 at 1/3 and 2/3 of the iterations), snapshots to ``run_dir/snapshots/pretrain_iter_*``.
"""
from __future__ import annotations

from pathlib import Path

import jinja2
from google.protobuf import text_format

from generator.config import load_variant
from generator.output import write_atomic
from generator.plan import build_plan
from generator.render import (GenerationError, RenderedNet, environment, header,
                                    parse_checked)

DEFAULT_SIZE = (224, 224)


def render_pretrain(variant: str = "light", *, num_classes: int, root: str | Path,
                    height: int = DEFAULT_SIZE[0], width: int = DEFAULT_SIZE[1],
                    batch_size: int = 32, seed: int = 0, augment: bool = True) -> RenderedNet:
    """The pre-training net of ``variant``'s backbone for a classification folder ``root``."""
    if num_classes < 2:
        raise GenerationError(f"pre-training needs at least 2 classes, got {num_classes}")
    v = load_variant(variant, overrides={"input": {"height": height, "width": width}})
    plan = build_plan(v.config, where=f"{v.path} (pre-training input {height}x{width})")
    what = f"variant {variant!r} ({v.path}), pretrain net"
    data_params = {"root": str(root), "height": height, "width": width,
                   "batch_size": batch_size, "num_classes": num_classes, "seed": seed,
                   "augment": augment}
    try:
        rendered = environment().get_template("pretrain.prototxt.j2").render(
            net_name=f"rmnet_{variant}_pretrain", cfg=v.config, plan=plan,
            data_params=data_params, num_classes=num_classes,
            solver_iter_size=v.config["solver"]["iter_size"])
    except jinja2.TemplateError as e:
        raise GenerationError(f"{what}: {e}") from None
    net = parse_checked(rendered, what)
    text = header(v, "pretrain", None) + text_format.MessageToString(net, as_utf8=True)
    return RenderedNet(variant=variant, phase="pretrain", text=text, net=net, plan=plan)


def pretrain_schedule(iters: int, base: dict) -> dict:
    """The solver values for ``iters`` iterations (lr steps at 1/3 and 2/3)."""
    return {"base_lr": base["base_lr"], "gamma": base["gamma"], "stepsize": max(1, iters // 3),
            "max_iter": iters, "momentum": base["momentum"],
            "weight_decay": base["weight_decay"], "display": max(1, min(20, iters // 20)),
            "average_loss": max(1, min(20, iters // 20)), "snapshot": max(1, min(10000, iters))}


def write_pretrain_run(run_dir: str | Path, variant: str = "light", *, num_classes: int,
                       root: str | Path, iters: int, height: int = DEFAULT_SIZE[0],
                       width: int = DEFAULT_SIZE[1], batch_size: int = 32, seed: int = 0,
                       base_lr: float | None = None) -> dict[str, Path]:
    """Net and solver in ``run_dir`` (absolute paths); {"net", "solver", "snapshots"}."""
    from caffe.proto import caffe_pb2

    run_dir = Path(run_dir).resolve()
    net = render_pretrain(variant, num_classes=num_classes, root=Path(root).resolve(),
                          height=height, width=width, batch_size=batch_size, seed=seed)
    cfg = load_variant(variant).config
    s = pretrain_schedule(iters, cfg["solver"])
    if base_lr is not None:
        s["base_lr"] = base_lr
    snapshots = run_dir / "snapshots"
    paths = {"net": run_dir / "pretrain.prototxt", "solver": run_dir / "solver.prototxt",
             "snapshots": snapshots}
    try:
        solver_text = environment().get_template("pretrain_solver.prototxt.j2").render(
            net=paths["net"].as_posix(), s=s, seed=seed,
            snapshot_prefix=(snapshots / "pretrain").as_posix())
    except jinja2.TemplateError as e:
        raise GenerationError(f"pretrain solver: {e}") from None
    solver = caffe_pb2.SolverParameter()
    try:
        text_format.Parse(solver_text, solver)
    except text_format.ParseError as e:
        raise GenerationError(f"pretrain solver: Caffe's SolverParameter rejects it: {e}") from None
    snapshots.mkdir(parents=True, exist_ok=True)
    write_atomic(paths["net"], net.text)
    write_atomic(paths["solver"], "# RMNet backbone pre-training solver (generator/pretrain.py)\n"
                 + text_format.MessageToString(solver, as_utf8=True))
    return paths
