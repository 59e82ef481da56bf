"""Shared test configuration.

Hypothesis runs derandomized (a fixed seed) so CI is reproducible. A test that needs an optional
tool calls :func:`require_tool`: outside CI a missing tool skips with a message; in CI
(``BITFAB_REQUIRE_TOOLS=1``, set by ``.ci/run``) it fails, so nothing silently goes unchecked.
"""

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "bitfab", derandomize=True, deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("bitfab")

os.environ.setdefault("BITFAB_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "build"))


def require_tool(name: str, why: str = "") -> str:
    """Return the path of executable ``name``; skip (or, in CI, fail) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not on PATH{': ' + why if why else ''}"
        if os.environ.get("BITFAB_REQUIRE_TOOLS"):
            pytest.fail(f"{msg} (BITFAB_REQUIRE_TOOLS is set: CI must have every tool)")
        pytest.skip(msg)
    return path


@pytest.fixture
def tool():
    """The :func:`require_tool` function, as a fixture: ``tool("iverilog")``."""
    return require_tool


def bitfab_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the ``bitfab`` CLI in-process; return ``(exit status, stdout, stderr)``."""
    from bitfab.cli import run
    try:
        run(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def bitfab_json(capsys, *args) -> tuple[int, dict | None, str]:
    """Run the CLI in-process with ``--json`` among ``args``; return ``(exit status, the JSON
    object it printed last or None, stderr)``."""
    code, out, err = bitfab_cli(capsys, *args)
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err
