"""``make bench QUICK=1``: every measurement of bench/all.py runs and lands in the JSON and the
table (small shapes; speed and area are never asserted here, the numbers are the bench's)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench_all():
    spec = importlib.util.spec_from_file_location("bench_all", ROOT / "bench" / "all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_quick_bench_writes_every_section(tmp_path):
    bench = _bench_all()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "all.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["quick"] is True
    # the sections that build several simulators run in their own tests (tests/test_sim_fast.py)
    assert list(report["sections"]) == [s.name for s in bench.SECTIONS if s.smoke]
    for name, entry in report["sections"].items():
        assert "error" not in entry, f"{name}: {entry['error']}"
        assert bench._numbers(entry["result"]) > 0, name
    md = (tmp_path / "bench.md").read_text()
    rows, errors = bench.table(report["sections"])
    assert not errors
    assert "| section | measurement | value | compared with |" in md
    for section in bench.SECTIONS:
        assert f"| {section.name} |" in md, section.name
    assert len(rows) >= len([s for s in bench.SECTIONS if s.smoke])


def test_a_failing_or_missing_measurement_is_an_error_row(tmp_path):
    bench = _bench_all()
    missing = bench.Section("nowhere", "no_such_module", "a module that does not exist", None)
    entry = bench.run_section(missing, quick=True, timeout=120)
    assert "error" in entry and "no_such_module" in entry["error"]
    # a result without the fields its rows read is an error row too, not a crash
    report = {"command": "test", "quick": True, "started": "now",
              "machine": {"cpus": 2, "machine": "x", "python": "3", "load_start": 0.0,
                          "load_end": 0.0},
              "sections": {"golden": {"result": {"unexpected": 1}, "seconds": 0.1},
                           "boards": entry}}
    bench.write_markdown(tmp_path / "bench.md", report, [])
    md = (tmp_path / "bench.md").read_text()
    assert "| golden | golden model MAC/s vs numpy float32 BLAS | **error** | table: KeyError" in md
    assert "| boards | Fmax, flow time and vectors/s per board | **error** |" in md
    assert "Failed or missing: golden, boards" in md
