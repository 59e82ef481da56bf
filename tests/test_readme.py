"""Every fenced code block of README.md runs as written.

- ``sh`` / ``console`` blocks: each command runs, in order, in one fresh temporary folder, with the
  ``bitfab`` of this Python first on PATH (``console`` blocks: the lines after ``$ ``). Only
  ``bitfab`` commands may appear, and ``make`` lines: ``make demo`` / ``make test`` are not run
  (``make test`` is this test suite) but must be targets of the Makefile.
- ``python`` blocks run in a fresh interpreter in a temporary folder, warnings as errors.
- ``text`` blocks (pictures, pseudo-syntax that cannot run) are the only ones skipped. Every block
  must say its language, and the language must be one of these four, so nothing is skipped
  silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LANGUAGES = {"sh", "console", "python", "text"}
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def readme_blocks() -> list[tuple[str, str, int]]:
    """Return ``(language, body, line)`` for every fenced block of the README, in order."""
    text = README.read_text()
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in _FENCE.finditer(text)]


def commands(lang: str, body: str, line: int) -> list[tuple[int, str]]:
    """Return ``(line, command)`` of a shell block: comments and console output dropped,
    backslash continuations joined."""
    out, pending, start = [], "", 0
    for k, raw in enumerate(body.splitlines(), start=line + 1):
        if lang == "console":
            if not raw.startswith("$ ") and not pending:
                continue  # output
            raw = raw[2:] if raw.startswith("$ ") else raw
        cmd = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not cmd and not pending:
            continue
        if not pending:
            start = k
        if cmd.endswith("\\"):
            pending += cmd[:-1] + " "
            continue
        out.append((start, (pending + cmd).strip()))
        pending = ""
    assert not pending, f"README line {start}: a command ends in a backslash"
    return out


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


def _shell_blocks():
    return [(lang, body, line) for lang, body, line in readme_blocks() if lang in ("sh", "console")]


def _runnable(lang, body, line):
    return [(k, c) for k, c in commands(lang, body, line) if not c.startswith("make ")]


def _marks(cmds) -> list:
    text = "\n".join(c for _, c in cmds)
    marks = [pytest.mark.slow]
    if re.search(r"bitfab (train|demo)\b", text):
        marks.append(pytest.mark.train)
    if re.search(r"bitfab (synth|demo)\b|--netlist", text):
        marks.append(pytest.mark.synth)
    if re.search(r"--simulator (verilator|icarus)|--netlist|bitfab demo", text):
        marks.append(pytest.mark.cocotb)
    return marks


def _shell_params():
    params = []
    for lang, body, line in _shell_blocks():
        cmds = _runnable(lang, body, line)
        if cmds:
            params.append(pytest.param(cmds, id=f"line{line}", marks=_marks(cmds)))
    return params


def _python_params():
    return [pytest.param(body, line, id=f"line{line}")
            for lang, body, line in readme_blocks() if lang == "python"]


def test_every_block_has_a_known_language():
    text = README.read_text()
    blocks = readme_blocks()
    fences = len(re.findall(r"^```", text, re.M))
    assert fences == 2 * len(blocks), "README.md has an unclosed or nested code fence"
    for lang, _, line in blocks:
        assert lang in LANGUAGES, (
            f"README line {line}: code block language {lang!r} is not one of "
            f"{sorted(LANGUAGES)} (mark pictures and pseudo-syntax `text`; everything else runs "
            f"in tests/test_readme.py)")


def test_every_block_is_run_or_text():
    """The parametrized tests below cover every block that is not ``text``."""
    shell = {line for lang, body, line in _shell_blocks() if commands(lang, body, line)}
    python = {line for lang, _, line in readme_blocks() if lang == "python"}
    text = {line for lang, _, line in readme_blocks() if lang == "text"}
    assert shell | python | text == {line for _, _, line in readme_blocks()}
    assert python, "the README's Python example must stay tested"
    tour = [p for p in _shell_params() if any(c.startswith("bitfab train") for _, c in p.values[0])]
    assert tour, "the README's tour (a block starting with bitfab train) must stay tested"


def test_shell_blocks_run_only_bitfab_and_make():
    for lang, body, line in _shell_blocks():
        for k, cmd in commands(lang, body, line):
            assert re.match(r"(bitfab|make) ", cmd), \
                f"README line {k}: only bitfab and make commands may appear in a code block: {cmd}"


def test_make_commands_are_makefile_targets():
    targets = makefile_targets()
    seen = set()
    for lang, body, line in _shell_blocks():
        for k, cmd in commands(lang, body, line):
            if cmd.startswith("make "):
                words = cmd.split()[1:]
                assert words and all(w in targets for w in words), \
                    f"README line {k}: {cmd!r} is not a Makefile target ({sorted(targets)})"
                seen.update(words)
    assert {"demo", "test"} <= seen, "the README must show `make demo` and `make test`"


@pytest.mark.parametrize("code, line", _python_params())
def test_python_block_runs(code, line, tmp_path):
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README line {line}:\n{proc.stderr[-3000:]}"
    # warnings raised in __del__ (e.g. Amaranth's UnusedElaboratable) do not change the exit code
    assert proc.stderr.strip() == "", f"README line {line}: stderr:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("cmds", _shell_params())
def test_shell_block_runs(cmds, tmp_path):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # as a user gets it: build/ inside the folder the commands run in. The YoWASP WASM cache
    # (tests/conftest.py) is kept, so that the tools are not compiled again (~80 s).
    env["BITFAB_BUILD_DIR"] = str(tmp_path / "build")
    for line, cmd in cmds:
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (f"README line {line}: `{cmd}` exited {proc.returncode}:\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
