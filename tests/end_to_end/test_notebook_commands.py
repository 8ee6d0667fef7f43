"""Every command a notebook (or the README) prints runs as printed: a new user copies it into a terminal."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"`(img2img-lab [^`]+)`")


def printed_commands() -> list[str]:
    """The ``img2img-lab …`` commands in the notebooks' text (markdown cells) and the README's shell blocks."""
    found = []
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                found += COMMAND.findall("".join(cell["source"]))
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```\n(.*?)```", readme, flags=re.S):
        found += [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("img2img-lab ")]
    return found


class _Reached(BaseException):
    """Raised by the stand-in calibration: the command got as far as calibrating its config."""


def test_every_printed_command_runs_as_printed(tmp_path, monkeypatch, capsys):
    from img2img_lab.cli.main import main

    commands = printed_commands()
    assert any(command.startswith("img2img-lab sweep") for command in commands), commands
    monkeypatch.chdir(tmp_path)  # where a user would run them: not the checkout
    calibrated = []

    def stand_in(config, out_dir, **_):  # the full calibration takes minutes; its own tests run it
        calibrated.append((config[0].name, out_dir))
        raise _Reached

    monkeypatch.setattr("img2img_lab.calibration.procedure.calibrate", stand_in)
    ran = 0
    for command in commands:
        arguments = shlex.split(command.replace("RUN_DIR", "runs/quick"))[1:]
        if "&&" in arguments:
            continue
        if arguments[0] == "sweep":  # small enough to run whole; the configs' own metrics need no download
            arguments = [argument.replace("ssim,lpips", "ssim") for argument in arguments]
        if arguments[0] == "calibrate":
            with pytest.raises(_Reached):
                main(arguments + ["--no-progress"])
            continue
        assert main(arguments + (["--no-progress"] if arguments[0] == "sweep" else [])) == 0, (command,
                                                                                             capsys.readouterr().err)
        ran += 1
    assert ran >= 3 and calibrated and all(name == "calibrate" for name, _ in calibrated), (ran, calibrated)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """README's Python example, up to the calibration (minutes; its own tests run it), runs as printed from the
    checkout and prints the mean SSIM per strength."""
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
    sweep_part = example.split("result = ")[0].replace('"runs/python"', repr(str(tmp_path / "python")))
    monkeypatch.chdir(REPO)
    exec(compile(sweep_part, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "strength" in printed and "1.00" in printed and "0.75" in printed, printed
