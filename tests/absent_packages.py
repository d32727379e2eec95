"""pytest plugin for machines that lack the project's optional packages (`make test-offline`).

A GPU machine built with `make setup GPU=1 OFFLINE=...` has its own Python, without some of
requirements.txt's packages (OpenVINO, NNCF, FAISS, ONNX, ONNX Runtime: see OPTIONAL). A test
that fails only because one of those cannot be imported there is reported as skipped, naming the
package, instead of failed; every other outcome is left as it is. Nothing is skipped for a
package that is installed, and the plugin is not loaded by `make test`.

Load it with `pytest -p tests.absent_packages`.

The plugin sees only an import failing in the test's own process. A test whose optional package
is imported elsewhere (a tool run in a child process, or a command line that turns the
ImportError into its own one-line error) declares it instead with the mark ``needs(...)``, here
too: skipped, with the same reason, wherever the package is absent (plugin loaded or not).
"""
from __future__ import annotations

import importlib.util

import pytest

# The optional packages: requirements.txt's deployment and gallery packages.
OPTIONAL = ("openvino", "nncf", "faiss", "onnx", "onnxruntime")


def lacks(what: str) -> str:
    """The reason a test is skipped for: WHAT, one or more absent optional packages."""
    return f"needs {what}, which this machine's Python lacks"


def installed(name: str) -> bool:
    """Whether the optional package NAME can be imported (a name not in OPTIONAL is an error)."""
    if name not in OPTIONAL:
        raise ValueError(f"{name!r} is not one of the optional packages {OPTIONAL}")
    return importlib.util.find_spec(name) is not None


def needs(*packages: str) -> pytest.MarkDecorator:
    """Skip mark for a test that needs these optional packages (``@needs("onnx", "onnxruntime")``),
    skipped where any is absent, naming those."""
    missing = [name for name in packages if not installed(name)]
    return pytest.mark.skipif(bool(missing), reason=lacks(" and ".join(missing)))


def absent(name: str | None) -> str | None:
    """The optional package a ModuleNotFoundError for NAME is about, if it is really absent."""
    top = (name or "").split(".")[0]
    if top in OPTIONAL and not installed(top):
        return top
    return None


def missing_package(excinfo) -> str | None:
    """The absent optional package behind an exception (or its chained causes), if any."""
    err = excinfo.value if excinfo is not None else None
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ModuleNotFoundError) and absent(err.name):
            return absent(err.name)
        err = err.__cause__ or err.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        pkg = missing_package(call.excinfo)
        if pkg:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {lacks(pkg)}")
