"""The whole fine-tuning loop of ``tools/finetune.py``: a model in, a better model (or a plain
"it got worse") out, with the numbers to show it.

1. the model: an OpenVINO IR (imported with rmnet.deploy.ir_import, checked against the IR) or a
   caffemodel of a deploy net;
2. a validation split carved from the dataset's *training* identities (``carve_validation``,
   seeded; the test split is never looked at to choose anything), laid out as a Market-1501
   folder of symbolic links to the user's images (``link_split``; nothing is copied);
3. scores before: the dataset's test split (query + gallery) and the validation split, with
   rmnet.eval.evaluate, as tools/eval_market.py computes them;
4. fine-tuning with the recipe of training/finetune.py on the remaining training identities;
5. every snapshot (the freeze stage's end, each of the second stage's and each of the decay
   stage's) scored on the validation split; the best validation mAP is the chosen model
   (``choose_snapshot``);
6. the chosen model scored on the test split, exported to ONNX and OpenVINO IR
   (rmnet.deploy.export, checked against Caffe), and a report: a table, JSON and a PNG of the
   curves (``write_report``).

Everything goes under one output folder that must not exist or be empty, so nothing the user
had is overwritten. ``FinetuneResult.worse`` says whether the test-split mAP dropped.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rmnet.atomic import atomic_path, atomic_write_text
from rmnet.data.market import Dataset, Record
from training.finetune import VARIANT, FinetuneSettings, finetune_overrides, run_stages
from training.run import TrainingError

LIGHT_DEPLOY = "prototxt/light/deploy.prototxt"


class FinetuneError(TrainingError):
    """Bad input to the loop (output folder, model, dataset): one line, exit status 2."""


# --- the validation split ---------------------------------------------------------------------

def carve_validation(ds: Dataset, num_ids: int, seed: int = 0
                     ) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val query, val gallery) from ``ds.train``: ``num_ids`` identities, drawn with
    ``seed`` among those seen by at least two cameras, leave the training set; of each, up to
    two images on distinct cameras (in a seeded shuffle) are queries and the others the
    gallery, a query only while the gallery keeps an image of that identity on another camera
    (the Market-1501 protocol scores only such queries)."""
    by_pid: dict[int, list[Record]] = {}
    for r in ds.train:
        by_pid.setdefault(r.pid, []).append(r)
    eligible = sorted(p for p, rs in by_pid.items() if len({r.camid for r in rs}) >= 2)
    if num_ids < 2:
        raise FinetuneError(f"the validation split needs at least 2 identities, got {num_ids}")
    if len(by_pid) - num_ids < 2 or len(eligible) < num_ids:
        raise FinetuneError(f"{ds.root}: {len(by_pid)} training identities ({len(eligible)} on "
                            f"two or more cameras) cannot give {num_ids} validation identities "
                            f"and keep 2 or more to train on")
    rng = np.random.default_rng(seed)
    val = set(rng.choice(eligible, size=num_ids, replace=False).tolist())
    train = [r for r in ds.train if r.pid not in val]
    query, gallery = [], []
    for pid in sorted(val):
        records = [by_pid[pid][i] for i in rng.permutation(len(by_pid[pid]))]
        mine: list[Record] = []
        for r in records:     # up to 2 queries, on distinct cameras, each keeping a match
            rest = [g for g in records if g not in mine and g is not r]
            if (len(mine) < 2 and all(q.camid != r.camid for q in mine)
                    and all(any(g.camid != q.camid for g in rest) for q in mine + [r])):
                mine.append(r)
        query += mine
        gallery += [r for r in records if r not in mine]
    return train, query, gallery


def market_name(r: Record, index: int) -> str:
    """A Market-1501 file name carrying the record's pid and camera (the link's name)."""
    if not 1 <= r.pid <= 9999 or not 1 <= r.camid <= 9:
        raise FinetuneError(f"{r.path}: pid {r.pid} / camera {r.camid} cannot be written as a "
                            f"Market-1501 name (pid 1-9999, camera 1-9)")
    return f"{r.pid:04d}_c{r.camid}s1_{index:06d}_00{r.path.suffix.lower()}"


def link_split(root: Path, train: list[Record], query: list[Record],
               gallery: list[Record]) -> Path:
    """A Market-1501 folder at ``root`` of symbolic links to the images (absolute targets):
    what the data layer and the evaluation read. The user's images are not copied or moved."""
    for folder, records in (("bounding_box_train", train), ("query", query),
                            ("bounding_box_test", gallery)):
        (root / folder).mkdir(parents=True, exist_ok=False)
        for i, r in enumerate(records):
            os.symlink(Path(r.path).resolve(), root / folder / market_name(r, i))
    return root


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class Score:
    rank1: float      # percent
    rank5: float
    mAP: float        # percent, non-interpolated (torchreid/fast-reid)
    queries: int

    def short(self) -> str:
        return f"rank-1 {self.rank1:5.1f}  mAP {self.mAP:5.1f}"


# The validation split is made of training images, which no one checked for odd crops (a
# test split refuses a box more than 2x off the net's aspect, as tools/eval_market.py does):
# every one of them is resized and scored.
ANY_ASPECT = 1e6


def score_model(deploy: str | os.PathLike, weights: str | os.PathLike, ds: Dataset,
                max_aspect_change: float | None = None) -> Score:
    """Query/gallery metrics of a caffemodel on a dataset (rmnet.eval.evaluate, no flip)."""
    from rmnet.data.images import MAX_ASPECT_CHANGE
    from rmnet.deploy.backends import PycaffeBackend
    from rmnet.eval.evaluate import evaluate

    res = evaluate(PycaffeBackend(deploy, weights), ds, progress=False,
                   max_aspect_change=max_aspect_change or MAX_ASPECT_CHANGE).result
    return Score(100 * res.rank(1), 100 * res.rank(5), 100 * res.mAP, res.num_valid_queries)


def choose_snapshot(curve: list[tuple[int, str, Score]]) -> int:
    """Index of the validation point to keep: the highest validation mAP, rank-1 breaking a
    tie, then the earlier iteration (fewer steps away from the imported model)."""
    if not curve:
        raise FinetuneError("no snapshot to choose from")
    best = max(range(len(curve)),
               key=lambda i: (round(curve[i][2].mAP, 6), round(curve[i][2].rank1, 6), -i))
    return best


# --- the loop ---------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    model: str
    data: str
    out: str
    settings: dict
    split: dict
    before: dict                   # {"test": Score, "val": Score, "<other set>": Score}
    after: dict
    curve: list = field(default_factory=list)   # [{"iteration", "stage", "val": Score}]
    chosen: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    exported: dict = field(default_factory=dict)
    command: str = ""

    @property
    def worse(self) -> bool:
        return self.after["test"].mAP < self.before["test"].mAP

    def table(self) -> str:
        sets = list(self.before)
        lines = [f"{'split':<22} {'before':>24}   {'after':>24}   {'change':>14}"]
        for name in sets:
            b, a = self.before[name], self.after[name]
            lines.append(f"{name:<22} {b.short():>24}   {a.short():>24}   "
                         f"{a.rank1 - b.rank1:+5.1f} / {a.mAP - b.mAP:+5.1f}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = asdict(self)
        d["worse"] = self.worse
        return d


def prepare_model(model: Path, work: Path, prototxt: Path | None,
                  log: Callable[[str], None]) -> tuple[Path, Path]:
    """(deploy prototxt, caffemodel) of MODEL: an IR is imported (and checked) into ``work``."""
    from rmnet.paths import REPO

    if not model.is_file():
        raise FinetuneError(f"{model}: no such file")
    if model.suffix.lower() == ".xml":
        from rmnet.deploy.ir_import import IRImportError, import_ir
        out = work / "imported.caffemodel"
        try:
            report = import_ir(model, out, prototxt=prototxt)
        except IRImportError as e:
            raise FinetuneError(str(e)) from None
        for line in report.lines():
            log(f"import: {line}")
        return Path(report.prototxt), out
    if model.suffix.lower() != ".caffemodel":
        raise FinetuneError(f"{model}: expected an OpenVINO IR (.xml, its .bin next to it) or "
                            f"a .caffemodel")
    deploy = prototxt or REPO / LIGHT_DEPLOY
    from rmnet.caffe.caffemodel import WeightsError
    from training.run import check_weights_fit
    try:
        check_weights_fit(deploy, model, phase="TEST")
    except WeightsError as e:
        raise FinetuneError(str(e)) from None
    return Path(deploy), model


def deploy_input_size(deploy: Path) -> dict:
    """{"height", "width"} of a deploy net's Input layer."""
    from rmnet.caffe.protos import read_net
    for layer in read_net(deploy).layer:
        if layer.type == "Input":
            dims = list(layer.input_param.shape[0].dim)
            return {"height": int(dims[2]), "width": int(dims[3])}
    raise FinetuneError(f"{deploy}: no Input layer (a deploy net has one)")


def check_out(out: Path) -> None:
    """Refuse an output folder with anything in it (or a file): nothing is ever overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FinetuneError(f"{out}: exists and is not an empty folder; give a new output "
                            f"folder (nothing of yours is overwritten)")


def run_finetune(model: Path, data: Path, out: Path, settings: FinetuneSettings, *,
                 fmt: str | None = None, val_ids: int | None = None, seed: int = 0,
                 prototxt: Path | None = None, also: list[Path] | None = None,
                 batch_size: int | None = None, export_images: Path | None = None,
                 extra: dict | None = None, log: Callable[[str], None] = print,
                 command: str = "") -> FinetuneResult:
    """The loop of the module doc; returns the result (also written to ``out``)."""
    from rmnet.data.datasets import load_dataset
    from training.run import init_weights, prepare_run

    check_out(out)
    ds = load_dataset(data, fmt)
    if not ds.query or not ds.gallery:
        raise FinetuneError(f"{data}: no test split (query and gallery) to score on")
    others = [(p, load_dataset(p)) for p in (also or [])]
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir()
    deploy, start = prepare_model(model, work, prototxt, log)

    n_ids = ds.num_train_ids
    n_val = val_ids if val_ids is not None else max(2, min(100, round(0.1 * n_ids)))
    train, vq, vg = carve_validation(ds, n_val, seed)
    split = link_split(work / "split", train, vq, vg)
    val = load_dataset(split, "market")
    log(f"validation split (seed {seed}): {n_val} of the {n_ids} training identities "
        f"({len(vq)} queries, {len(vg)} gallery images); training on the other "
        f"{n_ids - n_val} ({len(train)} images); the test split is used only to score")

    def scores(weights: Path) -> dict[str, Score]:
        s = {"test": score_model(deploy, weights, ds),
             "val": score_model(deploy, weights, val, ANY_ASPECT)}
        for p, other in others:
            s[f"{p.name} test"] = score_model(deploy, weights, other)
        return s

    before = scores(start)
    log("before: " + "; ".join(f"{k} {v.short()}" for k, v in before.items()))

    overrides = finetune_overrides(settings)
    overrides["input"] = deploy_input_size(deploy)    # the run's nets take the model's input
    for key, value in (extra or {}).items():
        overrides.setdefault(key, {}).update(value)
    paths = prepare_run(VARIANT, split, work / "run", None, batch_size, extra=overrides,
                        log=log, format="market")
    init = work / "run" / "init.caffemodel"
    init_weights(paths["deploy"], init, seed=seed, source=start, log=log)
    from training.finetune import keeps_batchnorm
    if not keeps_batchnorm(paths["train"]):
        from training.unfold import unfold_if_imported
        unfold_if_imported(paths["deploy"], init, start,
                           lambda: [str(r.path) for r in train], seed=seed, log=log)
    if settings.imprint:
        from rmnet.data.datasets import load_train_sets
        from training.finetune import images_by_label, imprint_classes
        imprint_classes(paths["deploy"], init, images_by_label(load_train_sets(str(split))),
                        init, seed=seed, log=log)
    from training.run import inspect_solver
    freeze_iters = (inspect_solver(paths["solver_freeze"]).max_iter
                    if "solver_freeze" in paths else 0)
    max_iter = inspect_solver(paths["solver"]).max_iter
    decay_iters = (inspect_solver(paths["solver_decay"]).max_iter
                   if "solver_decay" in paths else 0)
    t0 = time.monotonic()
    snaps = run_stages(paths, init, freeze_iters, max_iter, echo=log, every=30.0,
                       decay_iters=decay_iters)
    train_seconds = time.monotonic() - t0

    points: list[tuple[int, str, Path]] = []
    if freeze_iters:
        points.append((0, "freeze end", paths["snapshots"] / f"{VARIANT}_freeze_iter_"
                                                              f"{freeze_iters}.caffemodel"))
    # one iteration axis: the decay stage's snapshots count on from the second stage's end
    points += [(it + (max_iter if stage == "decay" else 0), stage, p)
               for stage, it, p in snaps if it > 0]
    curve = []
    for it, stage, p in points:
        s = score_model(paths["deploy"], p, val, ANY_ASPECT)
        log(f"validation: iteration {it} ({stage}): {s.short()}")
        curve.append((it, stage, s))
    best = choose_snapshot(curve)
    chosen = points[best][2]
    after = scores(chosen)
    log("after: " + "; ".join(f"{k} {v.short()}" for k, v in after.items()))

    model_dir = out / "model"
    model_dir.mkdir()
    shutil.copyfile(paths["deploy"], model_dir / "deploy.prototxt")
    shutil.copyfile(chosen, model_dir / "finetuned.caffemodel")
    from rmnet.deploy.export import export
    rep = export(model_dir / "deploy.prototxt", model_dir / "finetuned.caffemodel", model_dir,
                 name="finetuned", openvino=True, images=export_images)
    for line in rep.lines():
        log(f"export: {line}")

    result = FinetuneResult(
        model=str(model), data=str(data), out=str(out),
        settings={k: v for k, v in asdict(settings).items()},
        split={"seed": seed, "val_ids": n_val, "train_ids": n_ids - n_val,
               "val_queries": len(vq), "val_gallery": len(vg), "train_images": len(train),
               "test": f"{data} query + gallery ({len(ds.query)} + {len(ds.gallery)} images)"},
        before=before, after=after,
        curve=[{"iteration": it, "stage": st, "val": s} for it, st, s in curve],
        chosen={"iteration": points[best][0], "stage": points[best][1],
                "caffemodel": str(chosen), "freeze_iters": freeze_iters,
                "full_iters": max_iter, "decay_iters": decay_iters},
        train_seconds=train_seconds,
        exported={"onnx": rep.onnx, "openvino_xml": rep.openvino_xml,
                  "caffemodel": str(model_dir / "finetuned.caffemodel"),
                  "prototxt": str(model_dir / "deploy.prototxt")},
        command=command)
    write_report(result, out, work / "run")
    return result


# --- the report ---------------------------------------------------------------------------------

def write_report(result: FinetuneResult, out: Path, run_dir: Path) -> None:
    """``out/finetune.json``, ``out/finetune.txt`` (the table) and ``out/finetune.png``."""
    text = result.table()
    atomic_write_text(out / "finetune.txt",
                      (f"$ {result.command}\n" if result.command else "") + text + "\n"
                      + summary_line(result) + "\n")
    atomic_write_text(out / "finetune.json", json.dumps(result.to_json(), indent=2) + "\n")
    plot_finetune(result, run_dir, out / "finetune.png")


def summary_line(result: FinetuneResult) -> str:
    b, a = result.before["test"], result.after["test"]
    verdict = ("WORSE: the fine-tuned model scores lower on the held-out test split than the "
               "model it started from" if result.worse else "better on the held-out test split")
    return (f"test mAP {b.mAP:.1f} -> {a.mAP:.1f}, rank-1 {b.rank1:.1f} -> {a.rank1:.1f}: "
            f"{verdict} (chosen: {result.chosen['stage']} iteration "
            f"{result.chosen['iteration']}, by validation mAP; training "
            f"{result.train_seconds / 60:.1f} min)")


def plot_finetune(result: FinetuneResult, run_dir: Path, png: Path) -> None:
    """Three panels against the second stage's iteration (the freeze stage drawn before 0, the
    decay stage after the second's end, shaded): validation mAP and rank-1 at each snapshot,
    the training losses, the lr as steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.log import read_caffe_log

    f = result.chosen.get("freeze_iters", 0)
    full, decay = result.chosen.get("full_iters", 0), result.chosen.get("decay_iters", 0)
    logs = [(-f, "freeze", run_dir / "train_freeze.log"), (0, "", run_dir / "train.log"),
            (full, "decay", run_dir / "train_decay.log")]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    its = [p["iteration"] for p in result.curve]
    ax.plot(its, [p["val"].mAP for p in result.curve], marker="o", label="validation mAP")
    ax.plot(its, [p["val"].rank1 for p in result.curve], marker="s", label="validation rank-1")
    ax.axhline(result.before["val"].mAP, color="grey", linestyle="--",
               label="validation mAP before")
    ax.axvline(result.chosen["iteration"], color="green", alpha=0.4, label="chosen")
    if decay:
        for a in axes:
            a.axvspan(full, full + decay, color="orange", alpha=0.1,
                      label="decay stage" if a is ax else None)
    ax.set_ylabel("percent (held-out ids)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    lr_label = {"freeze": "freeze stage", "": "all layers", "decay": "decay stage"}
    colours: dict[str, str] = {}
    for offset, stage, path in logs:
        if not path.is_file():
            continue
        log = read_caffe_log(path)
        for name in sorted(k for k in log.series if k.startswith("train/")
                           and not k.endswith("per_sample")):
            x, y = log.values(name)
            if x:   # one colour per loss across the stages, labelled once
                line, = axes[1].plot([i + offset for i in x], y, linewidth=1.0,
                                     color=colours.get(name),
                                     label=None if name in colours else name.removeprefix("train/"))
                colours.setdefault(name, line.get_color())
        x, y = log.values("lr")
        if x:
            axes[2].step([i + offset for i in x], y, where="post", label=lr_label[stage])
    axes[1].set_ylabel("train losses")
    axes[1].legend(fontsize=7, ncol=2)
    axes[1].grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("iteration of the all-layers stage (freeze stage before 0, decay stage "
                       "after its end)")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"fine-tuning {Path(result.model).name} on {Path(result.data).name}")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
