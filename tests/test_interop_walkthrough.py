"""docs/interop.md, "From Brevitas to a bitstream": its code blocks run as written (Brevitas
training and export_qonnx, bitfab import, info, sim, synth for the iCEBreaker, export)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "interop.md"
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
#: brevitas 0.13 warns at import (an optional kernel; its own deprecated brevitas.fx): named
#: here, every other warning stays an error
_WARNINGS = ["-W", "error",
             "-W", "ignore:fast_hadamard_transform package not found:UserWarning",
             "-W", "ignore:brevitas.fx is deprecated:DeprecationWarning"]


def walkthrough() -> list[tuple[str, str]]:
    """``(language, body)`` of the blocks of the walkthrough section, in order."""
    text = DOC.read_text()
    section = text.split("## From Brevitas to a bitstream", 1)[1].split("\n## ", 1)[0]
    return [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(section)]


def test_walkthrough_has_training_and_the_commands():
    blocks = walkthrough()
    assert [lang for lang, _ in blocks] == ["python", "sh"]
    assert "export_qonnx" in blocks[0][1]
    cmds = [c for c in blocks[1][1].splitlines() if c.strip()]
    assert [c.split()[1] for c in cmds] == ["import", "info", "sim", "synth", "export"]


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.synth
def test_walkthrough_runs(tmp_path):
    (python, code), (_, shell) = walkthrough()
    proc = subprocess.run([sys.executable, *_WARNINGS, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "digits.onnx").exists()
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["BITFAB_BUILD_DIR"] = str(tmp_path / "build")
    for cmd in [c.strip() for c in shell.splitlines() if c.strip()]:
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"`{cmd}`:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "back.onnx").exists()
