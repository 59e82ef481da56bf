"""The architecture as checks: three floors (import-linter), one layer protocol (every kind has a
hook on every floor), encodings answer for their facts, and ``bitfab info`` stays light."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_imports_point_down():
    """The import-linter contracts in pyproject.toml hold, and none of them ignores an import."""
    proc = _lint()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
    text = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in text and "unmatched_ignore" not in text
    assert ('layers = [\n    "cli : demo",\n    "sweep",\n    "sim | boards",\n    "hw | quant",'
            in text)


def test_a_reversed_contract_fails(tmp_path):
    """The checker is not vacuous: the floors upside down (core above the shell) break."""
    config = tmp_path / "reversed.toml"
    config.write_text('[tool.importlinter]\nroot_package = "bitfab"\n\n'
                      '[[tool.importlinter.contracts]]\nname = "upside down"\ntype = "layers"\n'
                      'containers = ["bitfab"]\nlayers = ["model", "hw", "cli"]\n')
    proc = _lint("--config", str(config))
    assert proc.returncode == 1 and "BROKEN" in proc.stdout, proc.stdout[-2000:]


def test_info_imports_neither_torch_nor_amaranth(tmp_path):
    import numpy as np

    from bitfab.examples import mlp
    mlp(np.random.default_rng(0), (8, 4, 2), "binary").save(tmp_path / "m.bfm")
    code = ("import sys\nfrom bitfab.cli import run\n"
            f"try:\n    run(['info', {str(tmp_path / 'm.bfm')!r}, '--json'])\n"
            "except SystemExit as exc:\n    assert not exc.code\n"
            "heavy = sorted(m for m in ('torch', 'amaranth') if m in sys.modules)\n"
            "sys.exit(f'imported {heavy}' if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_layer_kind_has_a_hook_on_every_floor():
    from bitfab.hw import kinds as hw_kinds
    from bitfab.layers import layer_kinds
    from bitfab.sim import golden
    assert set(layer_kinds()) == {"dense", "lstm", "lstm_mps", "conv", "maxpool", "avgpool",
                                  "flatten", "add"}
    hw_kinds._load()
    for kind in layer_kinds():
        assert kind in golden._KINDS, kind
    # every kind has its hardware (the image kinds: bitfab.hw.conv; lstm_mps: the lstm cell fed
    # by the MPS chain of its cores, bitfab.hw.lstm_mps)
    assert set(layer_kinds()) == set(hw_kinds._KINDS)


def test_no_isinstance_on_an_encoding_outside_the_encodings_module():
    """Code asks an encoding for its facts instead of testing its type."""
    names = "Binary|Ternary|Pow2|Lut|IntWeights"
    pattern = re.compile(rf"isinstance\((?![^,]*, str\))[^)]*(encoding|\benc\b|{names})")
    found = []
    for folder in ("bitfab", "quant", "hw", "sim", "boards"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "encodings.py" or path.is_symlink():
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.train
def test_the_shell_lists_the_recipes_quant_has():
    from bitfab.cli.train import RECIPES
    from bitfab.quant.recipes import RECIPES as QUANT
    assert list(RECIPES) == sorted(QUANT)


def test_one_pipeline_default_for_every_hardware_command():
    """verilog, sim, synth and board run share one --fold/--pipeline definition and default."""
    import click

    from bitfab.cli import COMMANDS, main
    from bitfab.hw.config import DEFAULT_PIPELINE
    ctx = click.Context(main)
    defaults = {}
    for name in ("verilog", "sim", "synth", "board"):
        cmd = main.get_command(ctx, name)
        if name == "board":
            cmd = cmd.get_command(ctx, "run")
        params = {p.name: p for p in cmd.params}
        defaults[name] = (params["pipeline"].default, params["fold"].default)
    assert set(defaults.values()) == {(DEFAULT_PIPELINE, None)}, defaults
    assert "bitfab.cli." in COMMANDS["sim"]
