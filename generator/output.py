"""Generated files. Committed are the models a user runs by name (``COMMITTED``):
prototxt/<variant>/{train,test,deploy}.prototxt and, with a solvers folder,
solvers/<name>.prototxt (``market`` for the light variant, ``market_strong`` for the strong one,
the variant's name for the others). The Table 2 ablation rows are rendered on demand
(``ABLATIONS``; ``make ablations`` writes them under runs/ablations/), and training runs render
their own nets (``write_run``)."""
from __future__ import annotations

from pathlib import Path

from generator.config import list_variants
from rmnet.atomic import atomic_write_text
from generator.render import PHASES, render, render_solver

GENERATED_MARK = "# RMNet "   # first bytes of every generated file (see render.header)
SOLVER_MARK = "# RMNet solver "
SOLVER_NAMES = {"light": "market", "strong": "market_strong"}
COMMITTED = ("light", "strong", "light_relu")


# Recipes rendered into each run folder by their own tools (tools/train.py --finetune,
# tools/finetune.py) or for a dataset (tools/train.py --variant scratch_small --data DIR):
# neither committed nor a Table 2 row.
RECIPES = ("finetune", "scratch_small")


def ablation_variants() -> list[str]:
    """The variants that are not committed: the Table 2 rows."""
    return [v for v in list_variants() if v not in COMMITTED and v not in RECIPES]


def solver_name(variant: str) -> str:
    """File stem of a variant's solver: the docs' `solvers/market.prototxt` is the light one."""
    return SOLVER_NAMES.get(variant, variant)


def generate_solvers(net_root: Path, variants: list[str] | None = None) -> dict[str, str]:
    """{"<name>.prototxt": text}; the solvers point at ``net_root``/<variant>/ (as given, so a
    relative ``prototxt`` resolves from the repo root where `caffe train` runs)."""
    return {f"{solver_name(name)}.prototxt":
            render_solver(name, net_dir=f"{Path(net_root).as_posix()}/{name}").text
            for name in (variants if variants is not None else COMMITTED)}


def generate_all(variants: list[str] | None = None) -> dict[str, str]:
    """{"<variant>/<phase>.prototxt": text} for the given variants (default: COMMITTED)."""
    files: dict[str, str] = {}
    for name in variants if variants is not None else COMMITTED:
        for phase in PHASES:
            files[f"{name}/{phase}.prototxt"] = render(name, phase).text
    return files


def write_atomic(path: Path, text: str) -> None:
    """Write a generated file atomically (rmnet.atomic), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def stale_files(out: Path, files: dict[str, str], pattern: str = "*/*.prototxt",
                mark: str = GENERATED_MARK) -> list[Path]:
    """Generated files under ``out`` that the current variants no longer produce."""
    stale = []
    for path in sorted(out.glob(pattern)):
        rel = path.relative_to(out).as_posix()
        if rel not in files and path.read_text().startswith(mark):
            stale.append(path)
    return stale


def _targets(out: Path, variants: list[str] | None, solvers_out: Path | None):
    """(folder, files, stale-pattern, mark) for the nets and, if asked, the solvers."""
    targets = [(out, generate_all(variants), "*/*.prototxt", GENERATED_MARK)]
    if solvers_out is not None:
        targets.append((Path(solvers_out), generate_solvers(out, variants), "*.prototxt",
                        SOLVER_MARK))
    return targets


def write_all(out: Path, variants: list[str] | None = None,
              solvers_out: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Render everything first (nothing is written if any net fails), then write the files
    that changed. With the default (COMMITTED) variants, also delete generated files that no
    committed variant produces. Returns (written, deleted)."""
    targets = _targets(Path(out), variants, solvers_out)
    written, deleted = [], []
    for folder, files, _, _ in targets:
        for rel, text in files.items():
            path = folder / rel
            if not path.exists() or path.read_text() != text:
                write_atomic(path, text)
                written.append(path)
    for folder, files, pattern, mark in targets:
        if variants is None and folder.exists():
            for path in stale_files(folder, files, pattern, mark):
                path.unlink()
                deleted.append(path)
                if path.parent != folder and not any(path.parent.iterdir()):
                    path.parent.rmdir()
    return written, deleted


def compare(out: Path, variants: list[str] | None = None,
            solvers_out: Path | None = None) -> list[str]:
    """Differences between the files under ``out`` (and ``solvers_out``) and fresh output
    (empty: up to date)."""
    problems = []
    for folder, files, pattern, mark in _targets(Path(out), variants, solvers_out):
        for rel, text in files.items():
            path = folder / rel
            if not path.exists():
                problems.append(f"missing: {path}")
            elif path.read_text() != text:
                problems.append(f"differs from fresh output: {path}")
        if variants is None and folder.exists():
            problems += [f"stale (no variant produces it): {p}"
                         for p in stale_files(folder, files, pattern, mark)]
    return problems


def write_run(variant: str, run_dir: Path, overrides: dict | None = None) -> dict[str, Path]:
    """One self-contained training run: train/test/deploy nets and a solver in ``run_dir``,
    rendered with ``overrides`` (e.g. another dataset root, class count or schedule), all paths
    absolute so `caffe train -solver run_dir/solver.prototxt` works from anywhere. Snapshots go
    to ``run_dir/snapshots/``. Returns {"train", "test", "deploy", "solver", "snapshots": path}.

    A config with a freeze stage (``freeze.iters`` > 0, fine-tuning) adds "train_freeze" and
    "solver_freeze": run that solver first (from the imported caffemodel), then "solver" from
    the caffemodel it ends with (``<variant>_freeze_iter_<freeze.iters>.caffemodel``). One with
    a decay stage (``decay.iters`` > 0) adds "solver_decay": run it last, from the caffemodel
    "solver" ends with (``<variant>_iter_<solver.max_iter>.caffemodel``), on the same train net."""
    from generator.config import load_variant

    run_dir = Path(run_dir).resolve()
    nets = {phase: render(variant, phase, overrides=overrides).text for phase in PHASES}
    snapshots = run_dir / "snapshots"
    prefix = (snapshots / variant).as_posix()
    solvers = {"solver": render_solver(variant, net_dir=run_dir.as_posix(),
                                       snapshot_prefix=prefix, overrides=overrides).text}
    cfg = load_variant(variant, overrides=overrides).config
    if cfg["decay"]["iters"]:
        solvers["solver_decay"] = render_solver(variant, net_dir=run_dir.as_posix(),
                                                snapshot_prefix=prefix, overrides=overrides,
                                                decay=True).text
    if cfg["freeze"]["iters"]:
        nets["train_freeze"] = render(variant, "train", overrides=overrides, freeze=True).text
        solvers["solver_freeze"] = render_solver(variant, net_dir=run_dir.as_posix(),
                                                 snapshot_prefix=prefix, overrides=overrides,
                                                 freeze=True).text
    snapshots.mkdir(parents=True, exist_ok=True)
    paths = {phase: run_dir / f"{phase}.prototxt" for phase in nets}
    for phase, text in nets.items():
        write_atomic(paths[phase], text)
    for name, text in solvers.items():
        paths[name] = run_dir / f"{name}.prototxt"
        write_atomic(paths[name], text)
    paths["snapshots"] = snapshots
    return paths
