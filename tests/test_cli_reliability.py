"""The command line refuses mistakes before any work, writes only where it is told, and shows
what takes long.

Every refusal is one line ``error: ...``: exit status 1 for bitfab's own checks, click's 2 for a
malformed option; never a traceback or ``internal error``, never a replaced value, never a write
outside the chosen folder (checked by listing the tree before and after).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bitfab_cli

from bitfab import Dense, InputFormat, IntegerModel, Ternary, Threshold
from bitfab.errors import BitfabError

ROOT = Path(__file__).resolve().parents[1]
#: what a build writes into its folder, and removed before a build (bitfab.boards.build.STALE)
BUILD_FILES = ("top.json", "top.stat.json", "top.report.json", "top.asc", "top.bin", "top.bit",
               "top.config", "top.il", "top.ys", "build_top.sh")


def cli(capsys, *args):
    return bitfab_cli(capsys, *args)


def one_line_error(code, err, status=1):
    assert code == status, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err


def hand_model(name="hand") -> IntegerModel:
    w0 = np.tile([1, 0, -1, 0], (6, 4))
    layer0 = Dense(w0, Ternary(), InputFormat.int(8), Threshold(np.tile([[-20], [0]], (3, 1))))
    layer1 = Dense(np.random.default_rng(0).integers(-1, 2, (3, 6)), Ternary(),
                   InputFormat.int(1))
    return IntegerModel((layer0, layer1), name=name)


def tree(root: Path) -> dict:
    """Every path under ``root``: its mode and, for a file, a hash of its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(root))] = (st.st_mode, digest)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained model (it carries the training state that eval --dataset rebuilds)."""
    path = tmp_path_factory.mktemp("trained") / "t.bfm"
    from bitfab.cli import run
    try:
        run(["train", "--recipe", "binary", "--epochs", "1", "--limit", "200", "--hidden", "8",
             "--no-reference", "--out", str(path), "--json"])
    except SystemExit as exc:
        assert not exc.code, exc
    return path


# --- 2 and 4: where a command writes --------------------------------------------------------------

#: command -> (arguments, ``--out`` is a file (True) or a folder, the name written in a folder)
COMMANDS = {
    "train": (["train", "--recipe", "binary", "--epochs", "1", "--limit", "200", "--hidden", "8",
               "--no-reference", "--json"], True, "out.bfm"),
    "eval": (["eval", "{model}", "--inputs", "{x}", "--json"], True, "out.npy"),
    "verilog": (["verilog", "{model}", "--json"], False, None),
    "synth": (["synth", "{model}", "--board", "icebreaker", "--json"], False, None),
}


def run_unprivileged(args) -> tuple[int, str, str]:
    """Run the CLI in a child process that the file modes bind: as root, under ``setpriv``
    without CAP_DAC_OVERRIDE (so ``os.access`` and every write see a read-only folder as such)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", "from bitfab.cli import run; run()", *map(str, args)]
    if os.geteuid() == 0:
        drop = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override", "--"]
        try:
            probe = subprocess.run([*drop, "true"], capture_output=True)
        except OSError:
            probe = None
        if probe is None or probe.returncode:
            pytest.skip("running as root, where every folder is writable, and setpriv cannot "
                        "drop CAP_DAC_OVERRIDE here: no folder is read-only to bitfab")
        cmd = drop + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", ["missing", "readonly", "foreign"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_writes_only_into_the_chosen_folder(capsys, tmp_path, monkeypatch, command, case):
    """Every command with ``--out``, into a missing, a read-only and a non-empty foreign folder:
    a one-line error or a write into that folder, and no other file changed."""
    import bitfab.boards.build

    def no_build(*a, **k):  # a command that should have refused never gets this far
        raise AssertionError("synth started a build")
    monkeypatch.setattr(bitfab.boards.build, "yosys_synth", no_build)
    work = tmp_path / "work"
    work.mkdir()
    model = hand_model()
    model.save(work / "m.bfm")
    np.save(work / "x.npy", np.zeros((4, 16), dtype=np.int64))
    (work / "top.json").write_text("a user's file beside the folder")
    args, is_file, name = COMMANDS[command]
    args = [a.format(model=work / "m.bfm", x=work / "x.npy") for a in args]
    folder = {"missing": work / "missing" / "deeper", "readonly": work / "ro",
              "foreign": work / "foreign"}[case]
    if case == "foreign":
        folder.mkdir()
        for user_file in (*BUILD_FILES, "notes.txt", "out.bfm.tmp", ".out.bfm.tmp"):
            (folder / user_file).write_text(f"the user's {user_file}")
    if case == "readonly":
        folder.mkdir()
        folder.chmod(0o555)
    out = folder / name if is_file else folder
    before = tree(work)

    if case == "readonly":
        code, stdout, err = run_unprivileged([*args, "--out", out])
    elif command == "synth" and case == "missing":
        # a full build takes minutes: its folder logic is what the command runs before the tools
        from bitfab.boards.build import synth_folder
        from bitfab.boards.targets import get_board
        from bitfab.toolchain import OUTPUT_MARKER
        made = synth_folder(model, get_board("icebreaker"), out)
        code, err = 0, ""
        assert made == out.resolve() and (out / OUTPUT_MARKER).is_file()
    else:
        code, stdout, err = cli(capsys, *args, "--out", out)

    after = tree(work)
    expect_write = (case == "foreign" and is_file) or (case == "missing" and not is_file)
    if expect_write:
        assert code == 0, err
        new = {(work / p).resolve() for p in set(after) - set(before)}
        inside = {p for p in new if p.is_relative_to(folder.resolve())}
        assert inside and all(folder.resolve().is_relative_to(p) for p in new - inside)
        assert {p: after[p] for p in before} == before  # nothing changed, nothing removed
        if is_file:
            assert out.exists()
    else:
        one_line_error(code, err)
        assert after == before
        assert "folder" in err or "writable" in err


def test_synth_folder_names_stay_inside_the_build_folder(tmp_path, monkeypatch):
    from bitfab.boards.build import synth_folder
    from bitfab.boards.targets import get_board
    from bitfab.toolchain import OUTPUT_MARKER

    monkeypatch.setenv("BITFAB_BUILD_DIR", str(tmp_path / "build"))
    board = get_board("icebreaker")
    for name in ("/abs/path", "../../x", "..", "", "a" * 300, "[/bold]\x1b[31m"):
        folder = synth_folder(hand_model(name), board, None)
        assert folder.parent == (tmp_path / "build" / "synth").resolve(), name
        assert len(folder.name) <= 64 + len("-icebreaker") and (folder / OUTPUT_MARKER).exists()
    assert not (tmp_path / "abs").exists() and not Path("/abs/path").exists()


def test_synth_reuses_only_a_folder_it_made(tmp_path):
    from bitfab.boards.build import synth_folder
    from bitfab.boards.targets import get_board

    board, model = get_board("icebreaker"), hand_model()
    first = synth_folder(model, board, tmp_path / "b")
    (first / "top.json").write_text("from the last build")
    assert synth_folder(model, board, tmp_path / "b") == first  # bitfab's: reused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "top.json").write_text("the user's")
    with pytest.raises(BitfabError, match="holds files that bitfab did not write"):
        synth_folder(model, board, mine)
    assert (mine / "top.json").read_text() == "the user's"


def test_save_never_touches_a_user_file_named_like_its_temporary(tmp_path):
    for user_file in ("m.bfm.tmp", ".m.bfm.tmp"):
        (tmp_path / user_file).write_text("the user's")
    hand_model().save(tmp_path / "m.bfm")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.bfm.tmp", "m.bfm", "m.bfm.tmp"]
    assert (tmp_path / "m.bfm.tmp").read_text() == "the user's"
    assert IntegerModel.load(tmp_path / "m.bfm").name == "hand"


@pytest.mark.parametrize("args, message", [
    (["train", "--recipe", "binary", "--epochs", "1", "--limit", "200", "--out",
      "{tmp}/nodir/x.bfm"], r"--out .*nodir/x.bfm: no such folder"),
    (["train", "--recipe", "lstm-gates", "--epochs", "1", "--limit", "20", "--out",
      "{tmp}/nodir/x.bfm"], r"no such folder"),
    (["eval", "{model}", "--inputs", "{x}", "--out", "{tmp}/nodir/p.npy"], r"no such folder"),
    (["sim", "{model}", "--vectors", "3", "--vcd", "{tmp}/nodir/w.vcd"],
     r"--vcd .*: no such folder"),
    (["verilog", "{model}", "--out", "{x}/sub"], r"is not a folder"),
])
def test_output_paths_are_checked_before_any_work(capsys, tmp_path, monkeypatch, args, message):
    import re

    import bitfab.quant.lstm_train
    import bitfab.quant.train

    def no_work(*a, **k):
        raise AssertionError("the command started working before checking its output path")
    monkeypatch.setattr(bitfab.quant.train, "fit", no_work)
    monkeypatch.setattr(bitfab.quant.lstm_train, "fit_lstm", no_work)
    hand_model().save(tmp_path / "m.bfm")
    np.save(tmp_path / "x.npy", np.zeros((4, 16), dtype=np.int64))
    args = [a.format(tmp=tmp_path, model=tmp_path / "m.bfm", x=tmp_path / "x.npy") for a in args]
    code, out, err = cli(capsys, *args)
    one_line_error(code, err)
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bfm", "x.npy"]


def test_eval_out_writes_the_name_given(capsys, tmp_path):
    hand_model().save(tmp_path / "m.bfm")
    np.save(tmp_path / "x.npy", np.zeros((4, 16), dtype=np.int64))
    code, _, err = cli(capsys, "eval", tmp_path / "m.bfm", "--inputs", tmp_path / "x.npy",
                          "--out", tmp_path / "pred")
    assert code == 0, err
    assert np.load(tmp_path / "pred").shape == (4,) and not (tmp_path / "pred.npy").exists()


# --- 5: no value silently replaced ----------------------------------------------------------------

TRAIN = ["train", "--recipe", "binary", "--limit", "200", "--hidden", "8", "--no-reference"]


@pytest.mark.parametrize("args, status, message", [
    (TRAIN + ["--epochs", "0"], 2, r"'--epochs': 0 is not in the range 1<=x<=100000"),
    (TRAIN + ["--epochs", "1", "--batch-size", "0"], 2, r"'--batch-size': 0 is not in the range"),
    (TRAIN + ["--epochs", "1", "--threads", "0"], 2, r"'--threads': 0 is not in the range"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "0"], 2,
     r"'--clock': 0.0 is not in the range x>0"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "1"], 1,
     r"the iCE40 PLL makes 16..275 MHz .* not 1 MHz"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "5000"], 1,
     r"the iCE40 PLL makes 16..275 MHz .* not 5000 MHz"),
    (["synth", "{model}", "--board", "ulx3s", "--clock", "5000"], 1,
     r"the ECP5 PLL makes 3.125..400 MHz"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "nan"], 2, r"nan is not a finite"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "inf"], 2, r"inf is not a finite"),
    (["synth", "{model}", "--board", "orangecrab", "--clock", "50"], 1,
     r"cannot make 50 MHz from 48 MHz within 1 %: the nearest is 51.2 MHz"),
    (["synth", "{model}", "--board", "icebreaker", "--baud", "0"], 2, r"'--baud': 0 is not"),
    # a baud the USB bridge cannot make, a clock too slow or too far off for the baud, a
    # self-test whose ROMs do not fit the block RAM: refused before any work
    (["synth", "{model}", "--board", "ulx3s", "--baud", "4000000"], 1,
     r"baud 4000000 is more than the FTDI FT231X USB bridge of ulx3s makes \(at most 3000000\)"),
    (["synth", "{model}", "--board", "icebreaker", "--baud", "13000000"], 1,
     r"more than the FTDI FT2232H USB bridge of icebreaker makes \(at most 12000000\)"),
    (["synth", "{model}", "--board", "icebreaker", "--clock", "12", "--baud", "6000000"], 1,
     r"a 12 MHz clock is too slow for 6000000 baud \(needs at least 4 clocks per bit, has "
     r"2.00\): give a --clock of at least 24 MHz"),
    (["synth", "{model}", "--board", "ulx3s", "--clock", "25", "--baud", "3000000"], 1,
     r"3000000 baud from 25 MHz is off by 4.2 %"),
    (["synth", "{model}", "--board", "icebreaker", "--selftest", "100000"], 1,
     r"the self-test's 100000 vectors need \d+ block RAMs \(128 \+ 9 bits each\), \d+ of 30 are "
     r"free beside hand's at fold 2,16: try --selftest \d+$"),
    (["board", "run", "{model}", "--simulate", "--timeout", "nan"], 2, r"nan is not a finite"),
])
def test_out_of_range_values_are_refused_up_front(capsys, tmp_path, monkeypatch, args, status,
                                                  message):
    import re

    import bitfab.boards.build
    import bitfab.quant.train

    def no_work(*a, **k):
        raise AssertionError("the command started working with a value it should refuse")
    monkeypatch.setattr(bitfab.quant.train, "fit", no_work)
    monkeypatch.setattr(bitfab.boards.build, "yosys_synth", no_work)
    hand_model().save(tmp_path / "m.bfm")
    code, out, err = cli(capsys, *[a.format(model=tmp_path / "m.bfm") for a in args])
    one_line_error(code, err, status)
    assert re.search(message, err), err


def test_pll_refuses_what_it_cannot_make_within_its_tolerance():
    from bitfab.boards.pll import TOLERANCE, plan
    from bitfab.boards.targets import get_board

    ice, ecp = get_board("icebreaker"), get_board("orangecrab")
    for board, mhz in ((ice, 1), (ice, 5000), (ice, 10), (ecp, 1), (ecp, 50), (ecp, 1e6)):
        with pytest.raises(BitfabError, match="PLL"):
            plan(board, mhz * 1e6)
    for bad in (0.0, -1e6, float("nan"), float("inf")):
        with pytest.raises(BitfabError, match="must be a positive frequency"):
            plan(ice, bad)
    for board, mhz in ((ice, 16), (ice, 50), (ice, 100), (ice, 270), (ecp, 51.2), (ecp, 100)):
        made = plan(board, mhz * 1e6).f_out
        assert abs(made - mhz * 1e6) <= TOLERANCE * mhz * 1e6
    assert plan(ice, None).params is None and plan(ice, 12e6).params is None


# --- 6: user mistakes are errors, not "internal error" --------------------------------------------

@pytest.mark.parametrize("extra, status, message", [
    (["--lr", "nan"], 2, r"'--lr': nan is not a finite number"),
    (["--lr", "-1"], 2, r"'--lr': -1.0 is not in the range x>0"),
    (["--limit", "0"], 2, r"'--limit': 0 is not in the range x>=2"),
    (["--threads", "-1"], 2, r"'--threads': -1 is not in the range 1<=x<=1024"),
    (["--seed", "-1"], 2, r"'--seed': -1 is not in the range"),
    (["--hidden", "100000,100000"], 1, r"make more than 16777216 weights"),
    (["--hidden", "-5"], 1, r"--hidden must be sizes like 256,256"),
    (["--recipe", "lstm-gates", "--hidden", "4,4"], 1, r"lstm-gates takes one hidden size"),
    (["--recipe", "lstm-gates", "--hidden", "5000"], 1, r"hidden must be in 1..1024"),
    (["--recipe", "lstm-gates", "--option", "lr=nan"], 1, r"lr must be a finite number > 0"),
    (["--recipe", "lstm-gates", "--option", "hidden_bits=x"], 1,
     r"hidden_bits must be an integer, not 'x'"),
])
def test_train_mistakes_are_one_line_errors(capsys, monkeypatch, extra, status, message):
    import re

    import bitfab.quant.lstm_train
    import bitfab.quant.train

    def no_work(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(bitfab.quant.train, "fit", no_work)
    monkeypatch.setattr(bitfab.quant.lstm_train, "fit_lstm", no_work)
    args = ["train", "--recipe", "binary", "--epochs", "1", "--no-reference", *extra]
    code, out, err = cli(capsys, *args)
    one_line_error(code, err, status)
    assert re.search(message, err), err


def test_markup_and_escapes_in_names_and_paths_print_verbatim(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # long temporary paths on one line
    markup = tmp_path / "[" / "bold]x[bold]"  # a path that reads [/bold]x[bold]
    markup.mkdir(parents=True)
    hand_model("[/bold]net[red]").save(markup / "m.bfm")
    hand_model("a\x1b[31mred\x1b[0m\nline").save(tmp_path / "ansi.bfm")
    code, out, err = cli(capsys, "info", markup / "m.bfm")
    assert code == 0, err
    assert "[/bold]net[red]" in out and "[/bold]x[bold]" in out
    code, out, err = cli(capsys, "info", tmp_path / "ansi.bfm")
    assert code == 0, err
    assert "\x1b" not in out and "a\\x1b[31mred\\x1b[0m\\nline" in out
    code, out, err = cli(capsys, "verilog", markup / "m.bfm", "--out", markup / "v[/i]")
    assert code == 0, err
    assert "v[/i]" in out
    code, out, err = cli(capsys, "sim", tmp_path / "ansi.bfm", "--vectors", "4", "--vcd",
                            markup / "w[red].vcd")
    assert code == 0, err
    assert "waveform:" in out and "w[red].vcd" in out and (markup / "w[red].vcd").exists()
    assert "\x1b" not in out + err


def test_errors_escape_control_characters(capsys, tmp_path):
    code, out, err = cli(capsys, "info", tmp_path / "a\x1b[31mb\nc.bfm")
    one_line_error(code, err)
    assert "\x1b" not in err and "a\\x1b[31mb\\nc.bfm" in err


@pytest.mark.train
@pytest.mark.parametrize("change, message", [
    ({"seed": "x"}, r"metadata.seed must be an integer, not 'x'"),
    ({"config": {"hidden": [200_000_000]}}, r"make more than 16777216 weights"),
    ({"config": {"seed": "x"}}, r"seed must be an integer, not 'x'"),
    ({"config": {"epochs": "x"}}, r"epochs must be an integer, not 'x'"),
    ({"config": "x"}, r"metadata.config must be a mapping"),
    ({"dataset": 3}, r"metadata.dataset must be a dataset name, not 3"),
])
def test_eval_dataset_auto_refuses_bad_training_metadata(capsys, tmp_path, trained, change,
                                                         message):
    import re
    m = IntegerModel.load(trained)
    meta = dict(m.metadata)
    for key, value in change.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    IntegerModel(m.layers, m.input_scale, m.output_scale, meta, m.extras, m.name).save(
        tmp_path / "bad.bfm")
    code, out, err = cli(capsys, "eval", tmp_path / "bad.bfm", "--dataset", "auto")
    one_line_error(code, err)
    assert re.search(message, err), err


# --- 8: what takes long shows it, and defaults finish in about a minute ---------------------------

def test_auto_picks_the_simulator_that_finishes_in_about_a_minute():
    from bitfab.examples import mlp
    from bitfab.sim.run import AUTO_SECONDS, amaranth_seconds, choose_simulator, random_inputs

    rng = np.random.default_rng(0)
    digits = mlp(rng, (64, 64, 32, 10))  # the trained digits MLP's shape: 6,464 synapses
    x, _ = random_inputs(digits, 1000)
    assert amaranth_seconds(digits, x) <= AUTO_SECONDS
    assert choose_simulator(digits, x) == "amaranth"  # a Verilator build took 711 s here
    assert choose_simulator(digits, x, netlist="ice40") == "verilator"
    mnist = mlp(rng, (784, 256, 256, 10))
    assert choose_simulator(mnist, random_inputs(mnist, 1000)[0]) == "verilator"


def test_sim_shows_its_stages_and_keeps_json_clean(capsys, tmp_path):
    hand_model().save(tmp_path / "m.bfm")
    code, out, err = cli(capsys, "sim", tmp_path / "m.bfm", "--vectors", "60")
    assert code == 0, err
    assert "elaborate" in out and "simulate" in out and "60/60 vectors" in out
    code, out, err = cli(capsys, "sim", tmp_path / "m.bfm", "--vectors", "60", "--json")
    assert code == 0, err
    assert out.count("\n") == 1 and json.loads(out)["vectors"] == 60


def test_verilator_build_estimate_names_size_and_time(tmp_path):
    from bitfab.sim.verilog import VERILATOR_BASE_SECONDS, VERILATOR_SECONDS_PER_MB, build_estimate

    v = tmp_path / "d.v"
    v.write_bytes(b"x" * 2_800_000)
    idle, loaded = (VERILATOR_BASE_SECONDS + 2.8 * k for k in VERILATOR_SECONDS_PER_MB)
    assert build_estimate([v]) == (f"2.8 MB of Verilog, about {idle:.0f} s (idle 2-core "
                                   f"machine) to {loaded / 60:.0f} min (loaded)")


def test_chains_option_reaches_the_hardware_and_is_checked(tmp_path, capsys):
    """``--chains`` builds the sums of that command with shared carry chains (junction signals
    in the Verilog), only for that command; a negative value is a one-line usage error."""
    from bitfab.examples import mlp
    from bitfab.hw import adder_tree
    model = mlp(np.random.default_rng(2), (40, 8, 4), "binary", name="ch")
    model.save(tmp_path / "ch.bfm")
    code, out, err = cli(capsys, "verilog", tmp_path / "ch.bfm", "--out", tmp_path / "on",
                         "--chains", "24")
    assert code == 0, err
    assert "_chain" in (tmp_path / "on" / "ch.v").read_text()
    assert adder_tree.CHAIN_CELLS == 0  # restored after the command
    code, out, err = cli(capsys, "verilog", tmp_path / "ch.bfm", "--out", tmp_path / "off")
    assert code == 0 and "_chain" not in (tmp_path / "off" / "ch.v").read_text()
    code, out, err = cli(capsys, "verilog", tmp_path / "ch.bfm", "--out", tmp_path / "bad",
                         "--chains", "-3")
    assert code == 2 and "--chains" in err and not (tmp_path / "bad").exists()
