"""quant/: quantizers, estimators, batchnorm folding, datasets (fast, no training)."""

import doctest
import gzip
import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfab.errors import BitfabError
from bitfab.model import Lut, Pow2, Ternary
from bitfab.quant import fold, quantizers, ste
from bitfab.quant.data import load_dataset, read_idx
from bitfab.quant.quantizers import (
    BinaryWeight,
    BipolarActivation,
    DenseShiftWeight,
    IntWeight,
    LutQWeight,
    Pow2Weight,
    SparseBinaryWeight,
    TernaryWeight,
    TwoBitWeight,
    UniformActivation,
)
from bitfab.sim.golden import requant, threshold

torch.set_num_threads(1)


@pytest.mark.parametrize("module", ["ste", "quantizers", "fold", "network", "data", "recipes"])
def test_doctests(module):
    mod = importlib.import_module(f"bitfab.quant.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_quantizer_has_a_doctest():
    finder = doctest.DocTestFinder()
    for name in quantizers.__all__:
        if name == "WeightQuantizer":
            continue
        tests = finder.find(getattr(quantizers, name), name, module=quantizers)
        assert any(t.examples for t in tests), f"{name} has no doctest"


def _w(seed=0, shape=(16, 24), scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


# --- straight-through estimators ------------------------------------------------------------------


def test_sign_ste_masks_gradient_outside_unit_interval():
    x = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.7, 1.0, 2.0], requires_grad=True)
    y = ste.SignSTE.apply(x)
    y.backward(torch.arange(1.0, 8.0))
    np.testing.assert_array_equal(y.detach().numpy(), [-1, -1, -1, 1, 1, 1, 1])
    np.testing.assert_array_equal(x.grad.numpy(), [0, 2, 3, 4, 5, 6, 0])


def test_round_half_up_matches_a_threshold():
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5])
    np.testing.assert_array_equal(ste.round_half_up(x).numpy(), [-1, 0, 1, 2, 3])


# --- weight quantizers: values in their sets, gradients as specified ------------------------------


def test_binary_values_gradient_and_clamp():
    w = _w().requires_grad_()
    q = BinaryWeight(w.shape)
    out = q(w)
    assert set(np.unique(out.detach().numpy())) <= {-1.0, 1.0}
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), (w.detach().abs() <= 1).float().numpy())
    with torch.no_grad():
        q.post_step(w)
    assert float(w.detach().abs().max()) <= 1.0
    w_int, alpha, enc = q.integer(w)
    np.testing.assert_array_equal(w_int, out.detach().numpy())


def test_bipolar_activation_hardtanh_mask():
    h = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    BipolarActivation()(h).sum().backward()
    np.testing.assert_array_equal(h.grad.numpy(), [0, 1, 1, 1, 0])


def test_sparse_binary_reaches_kept_fraction():
    w = _w(1, (32, 40))
    q = SparseBinaryWeight(w.shape, kept=0.25)
    q.set_progress(0.0, w)
    assert q.kept_now == 1.0
    q.set_progress(0.9, w)
    with torch.no_grad():
        q.post_step(w)
    out = q(w).detach().numpy()
    assert set(np.unique(out)) <= {-1.0, 0.0, 1.0}
    assert np.count_nonzero(out) == round(0.25 * w.numel())
    # the kept weights are the largest magnitudes
    kept = np.abs(w.numpy())[out != 0]
    dropped = np.abs(w.numpy())[out == 0]
    assert kept.min() >= dropped.max()
    assert q.penalty(w.requires_grad_()).item() > 0
    assert isinstance(q.integer(w)[2], Ternary)


def test_sparse_binary_rejects_bad_fraction():
    with pytest.raises(BitfabError, match=r"kept must be a fraction in \(0, 1\], not 1.5"):
        SparseBinaryWeight((2, 2), kept=1.5)


def test_twn_values_and_scale():
    w = _w(2).requires_grad_()
    q = TernaryWeight(w.shape)
    out = q(w).detach()
    delta = 0.7 * w.detach().abs().mean()
    big = w.detach().abs() > delta
    alpha = w.detach().abs()[big].mean()
    expected = torch.sign(w.detach()) * big * alpha
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    q(w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.ones(w.shape, dtype=np.float32))
    w_int, a, enc = q.integer(w)
    assert set(np.unique(w_int)) <= {-1, 0, 1} and isinstance(enc, Ternary)
    np.testing.assert_array_equal(w_int, expected.sign().numpy().astype(np.int64))


def test_ttq_learned_scales_and_gradients():
    w = _w(3).requires_grad_()
    q = TernaryWeight(w.shape, method="ttq")
    with torch.no_grad():
        q.wp.fill_(0.75)
        q.wn.fill_(0.5)
    out = q(w)
    vals = set(np.unique(out.detach().numpy()).tolist())
    assert vals <= {-0.5, 0.0, 0.75}
    out.sum().backward()
    d = 0.05 * w.detach().abs().max()
    pos, neg = w.detach() > d, w.detach() < -d
    assert q.wp.grad.item() == pos.sum().item()
    assert q.wn.grad.item() == -neg.sum().item()
    expected = torch.where(pos, 0.75, torch.where(neg, 0.5, 1.0))
    np.testing.assert_array_equal(w.grad.numpy(), expected.numpy())
    w_int, alpha, enc = q.integer(w)
    assert isinstance(enc, Lut) and enc.dictionary == (-10, 0, 15)


def test_ternary_rejects_unknown_method():
    with pytest.raises(BitfabError, match="ternary method must be 'twn' or 'ttq', not 'abc'"):
        TernaryWeight((2, 2), method="abc")


def test_pow2_values_in_set():
    w = _w(4)
    q = Pow2Weight(w.shape, levels=5)
    out = q(w).detach().numpy()
    top = round(float(np.log2(np.abs(w.numpy()).max())))
    allowed = {0.0} | {s * 2.0 ** e for s in (-1, 1) for e in range(top - 4, top + 1)}
    assert set(np.unique(out).tolist()) <= allowed
    w_int, alpha, enc = q.integer(w)
    assert enc == Pow2(0, 4, zero=True)
    enc.check(w_int, "w")
    np.testing.assert_array_equal(w_int * alpha, out)


@given(st.integers(0, 2 ** 31 - 1), st.integers(0, 5))
@settings(derandomize=True, deadline=None, max_examples=40)
def test_denseshift_never_zero(seed, P):
    g = torch.Generator().manual_seed(seed)
    shape = (5, 7)
    q = DenseShiftWeight(shape, P=P)
    # latents including exact zeros
    u = torch.randint(-2, 3, shape, generator=g).float() * 0.5
    with torch.no_grad():
        q.bits.copy_(torch.randint(-2, 3, q.bits.shape, generator=g).float() * 0.5)
    out = q(u).detach()
    assert torch.count_nonzero(out) == out.numel()
    w_int, alpha, enc = q.integer(u)
    assert enc == Pow2(0, P, zero=False)
    enc.check(w_int, "w")
    assert np.all(w_int != 0)
    np.testing.assert_array_equal((w_int * alpha).astype(np.float32), out.numpy())


def test_denseshift_surrogate_gradient():
    shape = (3, 4)
    q = DenseShiftWeight(shape, P=3)
    u = (torch.rand(shape, generator=torch.Generator().manual_seed(5)) - 0.5).requires_grad_()
    with torch.no_grad():
        q.bits.copy_(torch.rand(q.bits.shape, generator=torch.Generator().manual_seed(6)) - 0.5)
    q(u).sum().backward()
    p = (q.bits.detach() > 0).float().sum(0)
    s = torch.where(u.detach() >= 0, 1.0, -1.0)
    a = q.alpha
    # d/du of alpha * s * sqrt(p + 1), s through the masked sign estimator (|u| <= 1 here)
    torch.testing.assert_close(u.grad, a * torch.sqrt(p + 1), rtol=0, atol=1e-7)
    # d/dv_i of alpha * s * sqrt(p + 1) = alpha * s / (2 sqrt(p + 1)), masked to |v_i| <= 1
    expected = (a * s / (2 * torch.sqrt(p + 1))).expand_as(q.bits)
    torch.testing.assert_close(q.bits.grad, expected, rtol=0, atol=1e-7)


def test_denseshift_low_variance_init():
    q = DenseShiftWeight((64, 64), P=3)
    w = torch.empty(64, 64)
    q.init_(w)
    out = q(w).detach() / q.alpha
    assert set(np.unique(out.numpy()).tolist()) == {-1.0, 1.0}  # every weight starts at +-alpha


@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 8))
@settings(derandomize=True, deadline=None, max_examples=40)
def test_lutq_kmeans_step_never_increases_error(seed, K):
    w = _w(seed, (8, 12))
    q = LutQWeight(w.shape, K=K)
    q.init_(w)
    with torch.no_grad():  # a random dictionary and assignment, then Lloyd steps
        q.dictionary.copy_(torch.randn(K, generator=torch.Generator().manual_seed(seed + 1)))
        q.assign.copy_(torch.randint(0, K, w.shape, generator=torch.Generator().manual_seed(3)))
    err = q.error(w)
    for _ in range(4):
        q.kmeans_step(w)
        new = q.error(w)
        assert new <= err + 1e-9
        err = new
    D, alpha = q.integer_dictionary()
    vals = set(q(w).detach().numpy().ravel().tolist())
    assert vals <= set((D * alpha).astype(np.float32).tolist())


@pytest.mark.parametrize("constraint", ["pow2", "prune", "pow2+prune"])
def test_lutq_constraints_hold(constraint):
    w = _w(7, (20, 30))
    q = LutQWeight(w.shape, K=4, constraint=constraint, prune=0.4)
    q.init_(w)
    for _ in range(3):
        q.kmeans_step(w)
    d = q.dictionary.numpy()
    if "prune" in constraint:
        assert d[0] == 0.0
        assert np.count_nonzero(q.assign.numpy() == 0) >= round(0.4 * w.numel())
    if "pow2" in constraint:
        nz = d[d != 0]
        np.testing.assert_array_equal(np.exp2(np.round(np.log2(np.abs(nz)))), np.abs(nz))
    w_int, alpha, enc = q.integer(w)
    enc.check(w_int, "w")
    if "pow2" in constraint:
        assert enc.is_pow2
    np.testing.assert_array_equal((w_int * alpha).astype(np.float32), q(w).detach().numpy())


def test_lutq_rejects_unknown_constraint():
    with pytest.raises(BitfabError, match="LUT-Q constraint must be one of"):
        LutQWeight((2, 2), constraint="odd")


def test_twobit_stages():
    w = _w(8).requires_grad_()
    q = TwoBitWeight(w.shape, lam=1.0, hard_from=0.5)
    q.init_(w)
    q.set_progress(0.0, w)
    np.testing.assert_array_equal(q(w).detach().numpy(), w.detach().numpy())  # soft: float
    assert q.penalty(w).item() == 0.0  # ramp starts at 0
    q.set_progress(0.25, w)
    assert q.penalty(w).item() > 0
    q.set_progress(0.5, w)  # stage 2: projected once, then hard with STE
    assert bool(q.hard)
    out = q(w).detach().numpy() / float(q.alpha)
    assert set(np.round(np.unique(out), 5).tolist()) <= {-3.0, -1.0, 1.0, 3.0}
    assert q.penalty(w).item() == 0.0
    w_int, alpha, enc = q.integer(w)
    assert enc == Lut((-3, -1, 1, 3))
    q(w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.ones(w.shape, dtype=np.float32))


@pytest.mark.parametrize("make", [
    lambda s: Pow2Weight(s), lambda s: LutQWeight(s, K=4), lambda s: IntWeight(s, bits=4),
    lambda s: TernaryWeight(s), lambda s: TwoBitWeight(s),
])
def test_identity_straight_through(make):
    w = _w(10).requires_grad_()
    q = make(w.shape)
    q.init_(w)
    q.set_progress(1.0, w)  # two-bit: the hard stage
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(11))
    q(w).backward(g)
    np.testing.assert_array_equal(w.grad.numpy(), g.numpy())


@pytest.mark.parametrize("name", [n for n in quantizers.__all__
                                  if n.endswith("Weight") and n != "FloatWeight"])
def test_scale_is_the_integer_scale(name):
    w = _w(12)
    q = getattr(quantizers, name)(w.shape)
    q.init_(w)
    assert q.scale(w) == q.integer(w)[1]


def test_int_weight_range():
    w = _w(9)
    w_int, alpha, enc = IntWeight(w.shape, bits=3).integer(w)
    assert w_int.min() >= -3 and w_int.max() <= 3 and np.abs(w_int).max() == 3
    with pytest.raises(BitfabError, match="integer weight bits must be in 2..16, not 1"):
        IntWeight((2, 2), bits=1)


def test_uniform_activation_levels_and_gradient():
    act = UniformActivation(3, step=0.5)
    h = torch.tensor([-1.0, 0.2, 0.26, 1.3, 9.0], requires_grad=True)
    y = act(h)
    np.testing.assert_array_equal((y / 0.5).detach().numpy(), [0, 0, 1, 3, 7])
    y.sum().backward()
    np.testing.assert_array_equal(h.grad.numpy(), [0, 1, 1, 1, 0])
    with pytest.raises(BitfabError, match=r"activation bits must be 1 \(bipolar\) or 2..8, not 9"):
        UniformActivation(9)


# --- batchnorm folding against the unfolded float reference --------------------------------------


@pytest.mark.parametrize("act", [BipolarActivation(), UniformActivation(2), UniformActivation(4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_matches_float_reference(act, seed):
    rng = np.random.default_rng(seed)
    out = 48
    lo, hi = np.full(out, -300), np.full(out, 300)
    acc = rng.integers(-300, 301, size=(500, out))
    a = rng.uniform(0.001, 0.1)
    mean = rng.normal(0, 5, out)
    var = rng.uniform(0.5, 20, out)
    gamma = rng.normal(0, 1, out)
    gamma[:8] = -np.abs(gamma[:8])  # negative gamma: direction -1
    gamma[8] = 0.0  # constant channel
    beta = rng.normal(0, 1, out)
    stage = fold.fold_thresholds(a, mean, var, 1e-5, gamma, beta, act.offsets(), lo, hi)
    assert np.all(stage.direction[:8] == -1) and stage.direction[9:][gamma[9:] > 0].min() == 1
    folded = threshold(acc, stage.thresholds, stage.direction)
    reference = fold.float_reference(acc, a, mean, var, 1e-5, gamma, beta, act.offsets())
    np.testing.assert_array_equal(folded, reference)


def test_fold_check_catches_a_wrong_direction():
    rng = np.random.default_rng(3)
    acc = rng.integers(-50, 51, size=(200, 4))
    args = (0.1, np.zeros(4), np.ones(4), 0.0, np.array([1.0, -1.0, 2.0, -0.5]),
            np.array([0.1, 0.2, -0.3, 0.0]), [0.0])
    stage = fold.fold_thresholds(*args, np.full(4, -50), np.full(4, 50))
    reference = fold.float_reference(acc, *args)
    wrong = threshold(acc, stage.thresholds, -stage.direction)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(wrong, reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_fold_requant_approximates_float_reference(seed):
    # requant is an approximation (bias rounded to one accumulator unit): close, not exact
    rng = np.random.default_rng(seed)
    out, bits = 32, 4
    lo, hi = np.full(out, -2000), np.full(out, 2000)
    acc = rng.integers(-2000, 2001, size=(400, out))
    a, step = 0.004, 3 / 15
    mean, var = rng.normal(0, 2, out), rng.uniform(0.5, 4, out)
    gamma, beta = rng.normal(0, 1, out), rng.normal(0, 1, out)
    gamma[:6] = -np.abs(gamma[:6])
    bias, stage = fold.fold_requant(a, mean, var, 1e-5, gamma, beta, step, bits, lo, hi)
    assert np.all(stage.multiplier[:6] < 0)
    got = requant(acc + bias, stage.multiplier, stage.shift, stage.lo, stage.hi, stage.offset)
    h = gamma * (a * acc - mean) / np.sqrt(var + 1e-5) + beta
    want = np.clip(np.floor(h / step + 0.5), 0, 15).astype(np.int64)
    assert np.abs(got - want).max() <= 1
    assert np.mean(got != want) < 0.02


def test_requant_needs_multibit_activations():
    from bitfab.quant.recipes import TrainConfig, build_model
    cfg = TrainConfig("binary", act_stage="requant")
    with pytest.raises(BitfabError, match="act_stage 'requant' needs 2..8-bit activations"):
        build_model(cfg, 64, 10, None, 1.0)


# --- datasets -------------------------------------------------------------------------------------


def test_digits_split_is_fixed_by_seed():
    a, b, c = load_dataset("digits", 0), load_dataset("digits", 0), load_dataset("digits", 1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert len(a.y_train) + len(a.y_test) == 1797 and a.features == 64
    assert a.x_train.min() >= 0 and a.x_train.max() <= 16 and a.input_format.bits == 5


def _write_idx(path, arr, compress):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_dataset(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}",
                   rng.integers(0, 256, (n, 28, 28)), compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n),
                   compress)
    d = load_dataset(f"idx:{tmp_path}")
    assert d.x_train.shape == (30, 784) and d.x_test.shape == (10, 784)
    assert d.input_format.bits == 8 and d.input_scale == 1 / 255


def test_idx_errors(tmp_path):
    with pytest.raises(BitfabError, match="no such folder"):
        load_dataset(f"idx:{tmp_path}/nope")
    with pytest.raises(BitfabError, match=r"no train\*images\* file"):
        load_dataset(f"idx:{tmp_path}")
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(BitfabError, match="IDX header promises 9 bytes of data, the file holds 2"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(BitfabError, match="not an IDX file"):
        read_idx(bad)
    with pytest.raises(BitfabError, match="dataset must be 'digits', 'mnist1d' or 'idx:DIR'"):
        load_dataset("cifar")


def test_mnist1d_generator():
    importlib.import_module("mnist1d")  # a train dependency: missing fails, never skips
    state = np.random.get_state()
    d = load_dataset("mnist1d", 0)
    assert d.features == 40 and d.classes == 10 and len(d.y_train) + len(d.y_test) == 5000
    assert d.input_format.signed and d.x_train.min() >= -128 and d.x_train.max() <= 127
    # the generator reseeds numpy's global state; load_dataset puts it back
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])
