"""bitfab sweep: points as Dask tasks on a LocalCluster and on a scheduler with two workers of its
own (real processes, no mocks), the content-hash cache, failures (a point that does not fit, a
worker killed mid-run), the table and the plots, bad input."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import bitfab_cli

from bitfab.sweep.engine import VOLATILE, run_sweep
from bitfab.sweep.plots import pareto
from bitfab.sweep.spec import SpecError, load_spec, parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[1]

#: 2 recipes x 2 folds x 2 pipelines: tiny nets, one epoch on part of digits, yosys only (the
#: resources; place and route is the failure sweep's, on one point) to keep the test short
SPEC = """
steps = ["train", "eval", "yosys"]

[axes]
recipe = ["binary", "ternary"]
dataset = ["digits"]
hidden = [[16]]
epochs = [1]
board = ["icebreaker"]
fold = ["1,16", "2,16"]
pipeline = [1, 2]

[train]
limit = 400
"""

PNG = b"\x89PNG\r\n\x1a\n"


def _spec(tmp_path, text=SPEC, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _design(rows):
    """The table without the columns that depend on the machine or the run (times, paths)."""
    out = {}
    for row in rows:
        out[row["key"]] = {k: v for k, v in row.items()
                           if not any(k == c or k.startswith(c + ".") for c in VOLATILE)}
    return out


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The 8-point sweep on an embedded LocalCluster of two workers, then the same again."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = load_spec(_spec(tmp))
    t0 = time.perf_counter()
    first = run_sweep(spec, tmp / "out", workers=2)
    t1 = time.perf_counter()
    again = run_sweep(spec, tmp / "out", workers=2)
    t2 = time.perf_counter()
    return spec, first, again, t1 - t0, t2 - t1


def test_every_point_has_a_row_with_its_figures(local_sweep):
    _, first, _, _, _ = local_sweep
    assert first.ran == 8 and first.cached == 0 and first.failed == 0 and first.workers == 2
    rows = first.rows
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert {(r["recipe"], r["fold"], r["pipeline"]) for r in rows} == {
        (r, f, p) for r in ("binary", "ternary") for f in ("1,16", "2,16") for p in (1, 2)}
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert 0 < r["accuracy"] <= 1 and r["eval.mismatches"] == 0
        assert r["accuracy"] == r["eval.golden_accuracy"] == r["train.accuracy"]
        assert r["lut4"] > 100 and r["ff"] > 0 and r["synth.resources.lut4.available"] == 5280
        assert r["chosen_fold"] == r["fold"] and r["synth.pipeline"] == r["pipeline"]
        assert r["images_per_s"] == pytest.approx(
            r["synth.clock.clock_mhz"] * 1e6 / r["synth.initiation_interval"])
        assert r["synth.timing_met"] is None  # yosys only: no place and route
        assert (first.folder / "points" / r["key"] / "result.json").is_file()
    # points that differ only in fold and pipeline share their training
    by_recipe = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], set()).add(r["fingerprint"])
    assert all(len(f) == 1 for f in by_recipe.values())
    assert len(list((first.folder / "models").iterdir())) == 2
    table = (first.folder / "results.csv").read_text().splitlines()
    assert len(table) == 9 and "synth.resources.lut4.used" in table[0]
    assert len(json.loads((first.folder / "results.json").read_text())) == 8


def test_plots_are_valid_png(local_sweep):
    import matplotlib.image
    _, first, _, _, _ = local_sweep
    assert [p.name for p in first.plots] == ["plot-icebreaker.png"]
    path = first.plots[0]
    assert path.read_bytes()[:8] == PNG
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 600
    assert image.std() > 0.05  # something is drawn


def test_a_rerun_runs_no_point(local_sweep):
    _, first, again, t_first, t_again = local_sweep
    assert again.ran == 0 and again.cached == 8 and again.workers == 0  # no cluster started
    assert _design(again.rows) == _design(first.rows)
    ratio = t_again / t_first
    print(f"\nsweep of 8 points: first run {t_first:.1f} s, rerun {t_again:.2f} s, "
          f"ratio {ratio:.3f}")
    assert ratio < 0.1


def test_the_command_line_reads_the_cache(local_sweep, capsys):
    """``bitfab sweep --json`` on the cached folder: every row, nothing run, no cluster."""
    _, first, _, _, _ = local_sweep
    spec = first.folder.parent / "spec.toml"
    code, out, err = bitfab_cli(capsys, "sweep", spec, "--out", first.folder, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ran"] == 0 and result["cached"] == 8 and result["workers"] == 0
    assert _design(result["rows"]) == _design(first.rows)
    code, out, err = bitfab_cli(capsys, "sweep", spec, "--out", first.folder)
    words = " ".join(out.split())  # the table's title may wrap
    assert code == 0 and "0 run, 8 cached, 0 failed" in words and "plot-icebreaker.png" in out


def test_one_more_axis_value_runs_only_the_new_points(local_sweep):
    """Growing the spec reuses the cache: here one more pipeline value on the cached folder
    would run 4 points; checked on the plan, without running them."""
    from bitfab.sweep.engine import plan
    spec, first, _, _, _ = local_sweep
    grown = parse_spec({"steps": ["train", "eval", "yosys"],
                        "axes": {**spec.axes, "pipeline": [1, 2, 3]}, "train": {"limit": 400}})
    keys = {p.key for p in plan(grown)}
    assert len(keys) == 12 and {r["key"] for r in first.rows} <= keys


def test_same_table_on_a_scheduler_with_two_workers(local_sweep, tmp_path):
    """`dask scheduler` and two `dask worker` processes started here: the same results."""
    spec, first, _, _, _ = local_sweep
    dask_cli = str(Path(sys.executable).with_name("dask"))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
           # the settings docs/sweep.md asks of a sweep's scheduler (as the embedded one has)
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--memory-limit", "0"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_workers(address, 2)
        result = run_sweep(spec, tmp_path / "remote", scheduler=address)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    assert result.ran == 8 and result.workers == 2
    assert _design(result.rows) == _design(first.rows)


def _wait_for_workers(address: str, n: int) -> None:
    from distributed import Client
    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=60)


def _stop(proc: subprocess.Popen) -> None:
    """End a process this test started, and its children (the worker under its nanny)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_failures_are_recorded_and_the_sweep_completes(tmp_path):
    """A model that cannot fit (refused before synthesis), a worker killed on every try
    (SIGKILL of its own process: retried once, then failed) and once (the retry runs it); the
    good points place and route."""
    from bitfab.examples import mlp
    tiny, huge = tmp_path / "tiny.bfm", tmp_path / "huge.bfm"
    mlp(np.random.default_rng(0), (16, 8, 4), "binary", name="tiny").save(tiny)
    mlp(np.random.default_rng(0), (64, 512, 10), "binary", name="huge").save(huge)
    spec = load_spec(_spec(tmp_path, f"""
steps = ["synth"]
[axes]
model = ["{tiny}", "{huge}"]
fold = ["unrolled"]
fault = ["none", "kill-worker", "kill-worker-once"]
"""))
    states = []
    result = run_sweep(spec, tmp_path / "out", workers=2, progress=states.append)
    rows = {(Path(r["model"]).stem, r["fault"]): r for r in result.rows}
    assert len(rows) == 6 and result.failed == 4
    done = [s["done"] for s in states]
    assert done == sorted(done) and done[0] == 0 and states[-1]["done"] == 6
    assert states[-1]["failed"] == 4 and states[-1]["running"] == 0

    def attempts(row):
        return int((result.folder / "points" / row["key"] / "attempts").read_text())

    for name in ("tiny", "huge"):
        killed = rows[name, "kill-worker"]
        assert killed["status"] == "failed" and killed["failure"] == "crash"
        assert "worker died on each of 2 tries" in killed["reason"]
        assert attempts(killed) == 2
        assert attempts(rows[name, "kill-worker-once"]) >= 2
    for fault in ("none", "kill-worker-once"):
        good = rows["tiny", fault]
        assert good["status"] == "ok", good["reason"]
        assert good["synth.timing_met"] is True and good["fmax_mhz"] > 12
        assert Path(good["synth.bitstream"]).stat().st_size > 50_000
        unfit = rows["huge", fault]
        assert unfit["status"] == "failed" and unfit["failure"] == "fit"
        assert "does not fit" in unfit["reason"] and "before synthesis" in unfit["reason"]
        assert "\n" not in unfit["reason"]
    # a rerun retries what crashed, not what cannot fit
    from bitfab.sweep.engine import plan
    assert len(plan(spec)) == 6


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("[axes]\nwidht = [16]\n", r"unknown axis 'widht'"),
    ("[axes]\nrecipe = ['binary', 'quaternary']\n", r"axis recipe must be one of .*'quaternary'"),
    ("[axes]\nboard = ['icebreaker', 'de10']\n", r"axis board must be one of .*'de10'"),
    ("[axes]\nfold = ['2x16']\n", r"axis fold must be 'auto', 'unrolled' or 'PE,SIMD'"),
    ("[axes]\nrecipe = []\n", r"axis 'recipe' is empty"),
    ("[axes]\nepochs = [0]\n", r"axis epochs must be in 1\.\.100000, not 0"),
    ("steps = ['train', 'bake']\n[axes]\nrecipe = ['binary']\n", r"step must be one of"),
    ("[axes]\n", r"\[axes\] is missing or empty"),
    ("[axes]\nrecipe = ['binary']\n[train]\nlimt = 5\n", r"\[train\] has unknown option 'limt'"),
    ("[axes]\nrecipe = ['binary', 'binary']\n", r"axis 'recipe' has 'binary' twice"),
    ("[axes\n", r"not valid TOML"),
    ("[axes]\nmodel = ['{spec}']\n", r"axis model '.*spec.toml': "),
    ("steps = ['eval']\n[axes]\nmodel = ['{spec}']\nrecipe = ['binary']\n",
     r"cannot be combined with the training axis 'recipe'"),
    ("[axes]\nmodel = ['/nonexistent.bfm']\n", r"axis model '/nonexistent.bfm': no such file"),
    ("steps = ['yosys', 'synth']\n[axes]\nfold = ['auto']\n", r"steps has yosys and synth"),
    ("[axes]\nclock = [-3]\n", r"axis clock must be a clock in MHz"),
    ("[axes]\nfault = ['segfault']\n", r"axis fault must be one of none, kill-worker"),
])
def test_bad_specs_are_one_line_before_any_work(tmp_path, capsys, text, message):
    path = _spec(tmp_path, text.replace("{spec}", str(tmp_path / "spec.toml")))
    with pytest.raises(SpecError, match=message):
        run_sweep(load_spec(path), tmp_path / "out")
    code, out, err = bitfab_cli(capsys, "sweep", path, "--out", tmp_path / "out")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_line_within_the_timeout(tmp_path):
    spec = load_spec(_spec(tmp_path))
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=rf"--scheduler {address}: cannot reach a Dask "
                                        r"scheduler within 2 s"):
        run_sweep(spec, tmp_path / "out", scheduler=address, timeout=2)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, capsys):
    spec = _spec(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    cases = [(tmp_path / "file", "is a file, not a folder"),
             (tmp_path / "theirs", "holds files that bitfab did not write")]
    if not os.access("/proc/sys", os.W_OK):  # a read-only folder, even for root
        cases.append((Path("/proc/sys/bitfab-sweep"), "is not writable"))
    for out, message in cases:
        with pytest.raises(SpecError, match=message):
            run_sweep(load_spec(spec), out)
        code, _, err = bitfab_cli(capsys, "sweep", spec, "--out", out)
        assert code == 1 and message in err and err.count("\n") == 1, err


def test_spec_recipes_are_the_exportable_recipes():
    """Every exportable MLP recipe; the convolutional ones (``arch``) are not sweep axes yet."""
    from bitfab.quant.recipes import RECIPES
    from bitfab.sweep.spec import RECIPES as NAMED
    assert set(NAMED) == {name for name, r in RECIPES.items()
                          if name != "float" and r.arch is None}


def test_pareto_front():
    pts = [(100, 0.5), (200, 0.7), (150, 0.4), (300, 0.7), (400, 0.9)]
    assert pareto(pts, minimize_x=True) == [0, 1, 4]
    assert pareto(pts, minimize_x=False) == [4]
    assert pareto([(1, 0.5), (2, 0.9), (3, 0.8)], minimize_x=False) == [1, 2]


# --- bitfab synth --fold auto ---------------------------------------------------------------------


def test_fold_candidates_start_one_faster_than_the_estimate():
    from bitfab.boards.build import candidate_folds, choose_fold
    from bitfab.boards.targets import get_board
    from bitfab.examples import mlp
    from bitfab.sweep.folds import fold_candidates
    model = mlp(np.random.default_rng(1), (64, 64, 32, 10), "binary", name="m")
    board = get_board("icebreaker")
    folds = candidate_folds(model)
    pick = choose_fold(model, board)
    got = fold_candidates(model, board, count=3, faster=1)
    assert got[:2] == folds[folds.index(pick) - 1: folds.index(pick) + 1]
    assert got[2] == choose_fold(model, board, after=pick) and len(got) == 3
    assert fold_candidates(model, board, count=1) == [pick]  # one build: the estimate's pick


@pytest.mark.synth
def test_synth_fold_auto_builds_candidates_in_parallel(tmp_path, capsys):
    """Two candidate folds of a tiny net, placed and routed on a LocalCluster of two workers:
    the winner has the smallest initiation interval, then the fewest LUT4 (sweep.folds; here
    both take one vector per clock, so the smaller build wins)."""
    from bitfab.examples import mlp
    path = tmp_path / "tiny.bfm"
    mlp(np.random.default_rng(0), (16, 8, 4), "binary", name="tiny").save(path)
    code, out, err = bitfab_cli(capsys, "synth", path, "--board", "icebreaker", "--fold", "auto",
                                "--clock", "12", "--candidates", "2", "--workers", "2", "--out",
                                tmp_path / "build", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [r["fold"] for r in result["tried"]][0] == "unrolled" and len(result["tried"]) == 2
    assert all(r["status"] == "ok" for r in result["tried"]), result["tried"]
    best = result["best"]
    ranked = min(result["tried"], key=lambda r: (r["initiation_interval"], r["lut4"]))
    assert best["initiation_interval"] == ranked["initiation_interval"] == 1 and best["timing_met"]
    assert best["resources"]["lut4"]["used"] == ranked["lut4"]
    folder = "unrolled" if best["fold"] is None else f"fold-{best['fold'][0]}-{best['fold'][1]}"
    assert ranked["fold"] == ("unrolled" if best["fold"] is None else
                              f"{best['fold'][0]},{best['fold'][1]}")
    assert Path(best["bitstream"]).parent == tmp_path / "build" / folder
    assert (tmp_path / "build" / folder / "report.json").is_file()
    code, _, err = bitfab_cli(capsys, "synth", path, "--board", "icebreaker", "--workers", "2")
    assert code == 2 and "--workers and --candidates go with --fold auto" in err


def test_dask_settings_keep_the_distributed_section():
    """A fresh interpreter (distributed not imported yet): a sweep's dask settings leave the
    distributed defaults in place, so a second cluster in the same process starts."""
    code = ("import dask\nfrom bitfab.sweep.engine import CLUSTER_CONFIG, dask_config\n"
            "with dask_config(CLUSTER_CONFIG):\n    pass\n"
            "dask.config.get('distributed.comm.require-encryption')\n"
            "assert dask.config.get('distributed.deploy.lost-worker-timeout') != '1 day'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
