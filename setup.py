"""Install the RMNet reproduction's Python packages (``pip install -e .``, run by ``make setup``).

Five top-level packages, each importing only the ones below it (README.md, "Layout"):
commands (the command lines, installed as console scripts rmnet-<tool> beside
tools/<tool>.py) -> training (training runs: renders nets, runs Caffe) -> generator (Jinja2
templates -> prototxts) -> layers (the Caffe Python layers, named in prototxts as
``layers.<module>``) -> rmnet (the library: data, Caffe's files, evaluation, deployment,
gallery, benchmarks).

Dependencies are pinned in one place, requirements.txt, which this file reads. Caffe itself is
not a pip package: scripts/setup.sh builds it from Debian's source package and wires it into the
venv.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
TOP_LEVEL = ("rmnet", "layers", "generator", "training", "commands")
TOOLS = sorted(p.stem for p in (HERE / "commands").glob("*.py") if p.stem != "__init__")


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


setup(
    name="rmnet-caffe",
    version="0.1.0",
    description="RMNet person re-identification (Izutov, 2018) reproduced in Caffe",
    license="BSD-2-Clause",
    license_files=["LICENSE"],
    python_requires="==3.11.*",
    packages=find_packages(include=[f"{top}{sub}" for top in TOP_LEVEL for sub in ("", ".*")]),
    include_package_data=True,
    package_data={"generator": ["templates/*.j2", "variants/*.json"]},
    install_requires=requirements(),
    entry_points={"console_scripts": [f"rmnet-{t.replace('_', '-')} = commands.{t}:main"
                                      for t in TOOLS]},
)
