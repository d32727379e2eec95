"""RMNet prototxt generator: Jinja2 templates + JSON variant configs -> Caffe train/test/deploy nets.

API::

    from generator import list_variants, load_variant, render, generate_all
    net = render("light", "deploy")                        # RenderedNet: .text, .net, .plan
    net = render("light", "deploy", deploy_output="embedding")   # the published graph
    files = generate_all()                                 # {relative path: text}, all variants
    solver = render_solver("light")                        # RenderedSolver: .text, .solver
    paths = write_run("light", "runs/x", overrides={"data": {"root": "/data/market"}})

CLI: ``python -m generator --out prototxt`` (see ``--help``). Details: generator/README.md.
"""
from generator.config import ConfigError, Variant, list_variants, load_variant
from generator.plan import InputSizeError, Plan, build_plan
from generator.render import (PHASES, GenerationError, RenderedNet, RenderedSolver, render,
                              render_solver)
from generator.output import generate_all, generate_solvers, solver_name, write_all, write_run

__all__ = ["ConfigError", "GenerationError", "InputSizeError", "PHASES", "Plan", "RenderedNet",
           "RenderedSolver", "Variant", "build_plan", "generate_all", "generate_solvers",
           "list_variants", "load_variant", "render", "render_solver", "solver_name",
           "write_all", "write_run"]
