"""The environment files agree with each other and with the README; installs never leave torch unpinned."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _normalise(requirement: str) -> str:
    name, _, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(item) for item in project["dependencies"]
              + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["lab"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    listed = {_normalise(item) for item in pip_section}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert any(str(item).startswith("python") for item in environment["dependencies"])


def test_constraints_pin_torch_and_torchvision():
    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "torch==2.13.0" in lines and "torchvision==0.28.0" in lines
    lock = (REPO / "requirements-lock.txt").read_text().splitlines()
    assert "torch==2.13.0" in lock and "torchvision==0.28.0" in lock
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", requirement)[0].lower()
        assert any(line.lower().replace("_", "-").startswith(name.replace("_", "-") + "==") for line in lock), name


def test_every_install_goes_through_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and all("$(PIP_CONSTRAINTS)" in line for line in installs)
    assert "-c constraints.txt" in makefile
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    for line in ci.splitlines():
        if "pip install" in line:
            assert "-c constraints.txt" in line, line


def test_readme_quick_start_is_the_two_make_commands():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*$", quick_start, flags=re.M)
    assert commands == ["make test", "make demo"]
    makefile = (REPO / "Makefile").read_text()
    for target in ("test", "demo", "lab"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
