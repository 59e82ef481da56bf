"""Constructor validation (clear messages) and the payload packing helpers."""

import numpy as np
import pytest

from bitfab.errors import BitfabError, ModelRangeError
from bitfab.examples import random_dense
from bitfab.formats import StreamFormat
from bitfab.hw.config import ConfigError, LayerConfig, parse_fold
from bitfab.hw.layer import FoldedDense, UnrolledDense, build_layer
from bitfab.model import InputFormat, Lut, Pow2


def pack(values, fmt):
    """The payloads of ``values`` (rows of ``fmt`` values): :class:`StreamFormat` packing."""
    return StreamFormat(fmt, np.asarray(values).shape[-1]).pack(values)


def unpack(payloads, fmt, n):
    return StreamFormat(fmt, n).unpack(payloads)



@pytest.fixture
def layer():
    return random_dense(np.random.default_rng(0), 6, 4, "binary", None, "threshold")


@pytest.mark.parametrize("kwargs, message", [
    (dict(architecture="folded", pe=0, simd=2), r"pe must be in 1..out_features \(4\), not 0"),
    (dict(architecture="folded", pe=5, simd=2), r"pe must be in 1..out_features \(4\), not 5"),
    (dict(architecture="folded", pe=2, simd=4), r"simd must divide in_features \(6\), not 4"),
    (dict(architecture="folded", pe=2, simd=0), r"simd must divide in_features \(6\), not 0"),
    (dict(architecture="folded", pe=2), r"a folded layer needs both pe and simd"),
    (dict(architecture="folded", pe=2.5, simd=2), r"pe must be an integer, not 2.5"),
    (dict(architecture="unrolled", pe=2), r"pe and simd apply to the folded architecture only"),
    (dict(architecture="systolic"), r"architecture must be 'unrolled' or 'folded', not 'systolic'"),
    (dict(pipeline=-1), r"pipeline must be a non-negative integer, not -1"),
    (dict(pipeline="2"), r"pipeline must be an integer, not '2'"),
])
def test_config_errors_name_the_problem(layer, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        LayerConfig(layer, **kwargs)
    assert isinstance(info.value, BitfabError) and isinstance(info.value, ValueError)


def test_config_refuses_what_is_not_a_layer():
    with pytest.raises(ConfigError, match="layer must be a bitfab.model.Dense, not ndarray"):
        LayerConfig(np.ones((2, 2)))


def test_components_refuse_the_other_architecture(layer):
    with pytest.raises(ConfigError, match="UnrolledDense needs the unrolled architecture, not 'fo"):
        UnrolledDense(LayerConfig.folded(layer, 2, 3))
    with pytest.raises(ConfigError, match="FoldedDense needs the folded architecture, not 'unr"):
        FoldedDense(LayerConfig.unrolled(layer))
    with pytest.raises(ConfigError, match="config must be a layer configuration, not Dense"):
        build_layer(layer)


def test_derived_facts(layer):
    cfg = LayerConfig.folded(layer, 3, 2, pipeline=1)
    assert (cfg.synapse_folds, cfg.neuron_folds, cfg.initiation_interval) == (3, 2, 6)
    assert cfg.replace(pe=4).initiation_interval == 3
    assert LayerConfig.unrolled(layer).initiation_interval == 1
    assert cfg.kind == "xnor_popcount" and cfg.in_bits == 1 and cfg.out_bits == 1
    pow2 = random_dense(np.random.default_rng(1), 4, 2, Pow2(1, 4), InputFormat.int(3))
    assert LayerConfig.unrolled(pow2).weight_code_bits == 2 + 2
    lut = random_dense(np.random.default_rng(1), 4, 2, Lut((-1, 0, 3)), InputFormat.int(3))
    assert LayerConfig.unrolled(lut).weight_code_bits == 2


@pytest.mark.parametrize("text, message", [("4", "fold must be 'PE,SIMD'"),
                                           ("a,b", "fold must be 'PE,SIMD'"),
                                           ("1,2,3", "fold must be 'PE,SIMD'")])
def test_parse_fold(text, message):
    assert parse_fold("4, 8") == (4, 8)
    with pytest.raises(ConfigError, match=message):
        parse_fold(text)


@pytest.mark.parametrize("fmt", [InputFormat.bipolar(), InputFormat.int(1), InputFormat.int(4),
                                 InputFormat.int(5, signed=True), InputFormat.int(32, True)])
def test_pack_unpack_round_trip(fmt):
    rng = np.random.default_rng(2)
    if fmt.kind == "bipolar":
        x = 2 * rng.integers(0, 2, size=(7, 9)) - 1
    else:
        x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(7, 9))
    x[0], x[1] = fmt.min_value, fmt.max_value
    words = pack(x, fmt)
    assert all(0 <= w < 1 << (9 * fmt.bits) for w in words)
    np.testing.assert_array_equal(unpack(words, fmt, 9), x)


def test_pack_rule_is_element_k_at_bits_k_times_bits():
    assert pack(np.array([[1, -1, 1, 1]]), InputFormat.bipolar()) == [0b1101]
    assert pack(np.array([[-1, 2]]), InputFormat.int(4, signed=True)) == [0x2F]
    np.testing.assert_array_equal(unpack([0x2F], InputFormat.int(4, signed=True), 2), [[-1, 2]])


def test_pack_refuses_values_the_format_cannot_hold():
    with pytest.raises(ModelRangeError, match=r"values must be bipolar values in \[-1, 1\], not 0"):
        pack(np.array([[1, 0]]), InputFormat.bipolar())
    with pytest.raises(ModelRangeError, match=r"uint4 values in \[0, 15\], not 16"):
        pack(np.array([[16]]), InputFormat.int(4))


def test_packing_and_config_need_no_amaranth():
    """Host code (benches, board drivers) packs payloads without importing Amaranth."""
    import subprocess
    import sys
    code = ("import sys, bitfab.formats, bitfab.hw.config; "
            "sys.exit('amaranth' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_framed_stream_packs_steps_with_last_above_the_elements():
    """A framed stream: one payload per valid step, ``last`` at bit ``count * bits``."""
    stream = StreamFormat(InputFormat.int(4), 2, framed=True)
    x = np.array([[[1, 2], [3, 4], [9, 9]], [[5, 6], [0, 0], [0, 0]]])
    payloads = stream.pack(x, [2, 1])
    assert payloads == [0x21, 0x100 | 0x43, 0x100 | 0x65]
    np.testing.assert_array_equal(stream.unpack_codes(payloads),
                                  [[1, 2, 0], [3, 4, 1], [5, 6, 1]])
    assert stream.payload_bits == 9
