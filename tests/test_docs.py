"""The docs cannot drift from the code: every command in a fenced ``sh`` block of README.md,
docs/*.md and generator/README.md is checked against what it calls (the tool exists, each flag
it uses is one the tool's own ``--help`` lists, subcommands included; ``make`` targets and
variables exist in the Makefile; ``caffe`` gets a subcommand and flags it has; repository files
it reads exist), every relative link resolves, the README stays a front page (under 12 KB) that
links every page under docs/."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "generator" / "README.md"]
SHELLS = ("sh", "bash")
PYTHONS = {".venv/bin/python", ".venv-gpu/bin/python", "python", "python3"}
CAFFES = {".venv/bin/caffe", ".venv-gpu/bin/caffe", "caffe"}
CAFFE_ACTIONS = {"train", "test", "time", "device_query"}
CAFFE_FLAGS = {"-solver", "-weights", "-snapshot", "-gpu", "-model", "-iterations", "-phase",
               "-level", "-stage", "-sighup_effect", "-sigint_effect", "--version", "-version"}
# Repository folders whose files a documented command reads: a path into them must exist.
COMMITTED = ("prototxt/", "solvers/", "tools/", "scripts/", "generator/", "docker/", "layers/",
             "rmnet/", "commands/", "training/", "docs/", "results/")
OUTPUT_FLAGS = {"-o", "--out", "--solvers", "--json", "--png", "--cache", "--run-dir", "-t"}
DOCKER_VALUE_FLAGS = {"-v", "--volume", "-e", "--env", "-w", "--workdir", "--gpus", "--name",
                      "-p", "--publish"}
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")


def sh_blocks(text: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
            if m.group(1) in SHELLS]


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block as its tokens (comments dropped, continuations joined,
    ``[--optional flag]`` brackets stripped), split at ``&&``, ``||``, ``;`` and ``|``."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = [t.strip("[]") for t in shlex.split(line, comments=True)]
        cmd: list[str] = []
        for t in tokens + [";"]:
            if t in ("&&", "||", ";", "|", "&"):
                if cmd:
                    out.append(cmd)
                cmd = []
            elif t:
                cmd.append(t)
    return out


@lru_cache(maxsize=None)
def help_text(tool: str, sub: str | None) -> str | None:
    """The ``--help`` of ``tools/<tool>.py`` (or ``python -m generator``), of its subcommand
    ``sub`` if given; None if there is no such tool or subcommand."""
    if tool == "generator":
        argv = [sys.executable, "-m", "generator"]
    else:
        if not (REPO / "tools" / f"{tool}.py").is_file():
            return None
        argv = [sys.executable, str(REPO / "tools" / f"{tool}.py")]
    r = subprocess.run([*argv, *([sub] if sub else []), "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    return r.stdout if r.returncode == 0 else None


def help_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def subcommands(text: str) -> set[str]:
    m = re.search(r"\{([\w,-]+)\} \.\.\.", text)      # argparse's usage: {a,b} ...
    return set(m.group(1).split(",")) if m else set()


def check_tool(tool: str, args: list[str]) -> list[str]:
    top = help_text(tool, None)
    if top is None:
        return [f"no tool {tool!r} (tools/{tool}.py)"]
    subs = subcommands(top)
    sub = next((a for a in args if not a.startswith("-")), None) if subs else None
    if subs and sub not in subs:
        return [f"{tool}: {sub!r} is not one of its subcommands {sorted(subs)}"]
    text = help_text(tool, sub) if sub else top
    known = help_options(text or "")
    return [f"{tool}{' ' + sub if sub else ''}: no option {flag}" for flag in
            (FLAG.match(a).group(0) for a in args if FLAG.match(a)) if flag not in known]


@lru_cache(maxsize=None)
def makefile() -> tuple[set[str], str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w-]+):", text, re.M)), text


def check_make(args: list[str]) -> list[str]:
    targets, text = makefile()
    problems = []
    for a in args:
        if "=" in a:
            var = a.split("=", 1)[0]
            if f"$({var})" not in text and not re.search(rf"^{var}\s*\??=", text, re.M):
                problems.append(f"make: the Makefile uses no variable {var}")
        elif not a.startswith("-") and a not in targets:
            problems.append(f"make: no target {a!r}")
    return problems


def check_caffe(args: list[str]) -> list[str]:
    if args and args[0] in ("--version", "-version"):
        return []
    if not args or args[0] not in CAFFE_ACTIONS:
        return [f"caffe: {args[:1]} is not one of {sorted(CAFFE_ACTIONS)}"]
    return [f"caffe: no flag {a}" for a in args[1:] if a.startswith("-") and a not in CAFFE_FLAGS]


def check_paths(tokens: list[str]) -> list[str]:
    problems = []
    for prev, t in zip([""] + tokens, tokens):
        value = t.split("=", 1)[1] if t.startswith("-") and "=" in t else t
        if (prev in OUTPUT_FLAGS or not value.startswith(COMMITTED) or "..." in value
                or re.match(r"^tools/\w+\.py$", value)):       # a tool: check_tool says
            continue
        if not (REPO / value.rstrip("/")).exists():
            problems.append(f"{value}: no such file in the repository")
    return problems


def strip_launcher(cmd: list[str]) -> list[str]:
    """The command a line really runs: without ``VAR=value`` prefixes, ``sudo``, or the
    ``docker run [options] IMAGE`` in front of a command run inside the image."""
    while cmd and (re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]) or cmd[0] == "sudo"):
        cmd = cmd[1:]
    if cmd[:2] == ["docker", "run"]:
        rest, i = cmd[2:], 0
        while i < len(rest) and rest[i].startswith("-"):
            i += 2 if rest[i] in DOCKER_VALUE_FLAGS else 1
        return rest[i + 1:]                       # after the image
    return cmd


def check_command(cmd: list[str]) -> list[str]:
    problems = check_paths(cmd)
    cmd = strip_launcher(cmd)
    if not cmd:
        return problems
    prog, args = cmd[0], cmd[1:]
    if prog in PYTHONS and args:
        if args[0] == "-c":
            return problems
        if args[:2] == ["-m", "generator"]:
            return problems + check_tool("generator", args[2:])
        prog, args = args[0], args[1:]
    if prog.startswith("tools/") and prog.endswith(".py"):
        return problems + check_tool(prog[len("tools/"):-3], args)
    if prog.startswith("rmnet-"):
        return problems + check_tool(prog[len("rmnet-"):].replace("-", "_"), args)
    if prog == "make":
        return problems + check_make(args)
    if prog in CAFFES:
        return problems + check_caffe(args)
    return problems


def problems_in(text: str) -> list[str]:
    return [p for block in sh_blocks(text) for cmd in commands(block) for p in check_command(cmd)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_match_the_code(doc):
    assert sh_blocks(doc.read_text()) or doc.name != "README.md"
    assert problems_in(doc.read_text()) == []


def test_the_check_fails_on_a_renamed_flag_a_missing_tool_target_or_file():
    doc = ("```sh\n"
           ".venv/bin/python tools/eval_market.py --prototxt prototxt/light/deploy.prototxt \\\n"
           "    --weight model.caffemodel   # was --weights\n"
           ".venv/bin/python tools/gallery.py serch g/ --images q/\n"
           ".venv/bin/python tools/no_such_tool.py --x\n"
           "make demo DATA=d ITERATIONS=5 && make no-such-target\n"
           ".venv/bin/caffe train -solver solvers/no_such.prototxt -weigths a.caffemodel\n"
           "```\n")
    assert problems_in(doc) == [
        "eval_market: no option --weight",
        "gallery: 'serch' is not one of its subcommands "
        f"{sorted(subcommands(help_text('gallery', None)))}",
        "no tool 'no_such_tool' (tools/no_such_tool.py)",
        "make: the Makefile uses no variable ITERATIONS",
        "make: no target 'no-such-target'",
        "solvers/no_such.prototxt: no such file in the repository",
        "caffe: no flag -weigths",
    ]
    fine = ("```sh\n.venv/bin/python tools/eval_market.py --prototxt prototxt/light/deploy.prototxt"
            " --weights m.caffemodel --data D\nmake demo DATA=d ITERS=5\n```\n")
    assert problems_in(fine) == []


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"^[a-z]+:", path) and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_readme_is_a_front_page_linking_every_doc():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 12 * 1024
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages
    assert [p for p in pages if f"(docs/{p})" not in readme] == []
