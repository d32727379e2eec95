"""Install the RMNet reproduction's Python packages (``pip install -e .``, run by ``make setup``).

Package rmnet: the library by workflow (data, caffe, train, eval, deploy, bench), the net
generator (rmnet.generator: Jinja2 templates -> prototxts), the Caffe Python layers
(rmnet.layers, imported by Caffe by module name) and the command lines (rmnet.cli), installed as
console scripts rmnet-<tool> beside tools/<tool>.py.

Dependencies are pinned in one place, requirements.txt, which this file reads. Caffe itself is
not a pip package: scripts/setup.sh builds it from Debian's source package and wires it into the
venv.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
TOOLS = sorted(p.stem for p in (HERE / "rmnet" / "cli").glob("*.py") if p.stem != "__init__")


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


setup(
    name="rmnet-caffe",
    version="0.1.0",
    description="RMNet person re-identification (Izutov, 2018) reproduced in Caffe",
    python_requires="==3.11.*",
    packages=find_packages(include=["rmnet", "rmnet.*"]),
    include_package_data=True,
    package_data={"rmnet.generator": ["templates/*.j2", "variants/*.json"]},
    install_requires=requirements(),
    entry_points={"console_scripts": [f"rmnet-{t.replace('_', '-')} = rmnet.cli.{t}:main"
                                      for t in TOOLS]},
)
