"""Usage: python bench/spram_fashion_sim.py [MODEL.bfm]

Amaranth simulation of the 784-256-256-10 fashion network at fold 8,2 (pysim cannot compile
the 128-way channel select of fold 2,16: too many nested blocks) with layer 0 in SPRAM (the
placement bitfab synth chooses), loaded by BootLoad, against golden on test images; prints JSON.
"""
import json
import sys
import time

import numpy as np

from bitfab.boards.build import plan_weights
from bitfab.boards.targets import get_board
from bitfab.hw.layer import build_network
from bitfab.hw.spram import BootLoad
from bitfab.model import IntegerModel
from bitfab.sim import golden
from bitfab.sim.amaranth_sim import outputs_of, run_stream

sys.setrecursionlimit(20000)  # the deep nested channel selects
path = sys.argv[1] if len(sys.argv) > 1 else "build/fashion-bin.bfm"  # bench/fashion_binarize.py
m = IntegerModel.load(path)
x = np.load(path + ".xtest.npy")[:3]
plan = plan_weights(m, (8, 2), get_board("icebreaker"))
net = build_network(m, (8, 2), 1, plan)
img = net.load_image()
t = time.time()
r = run_stream(BootLoad(net, img), m.in_stream.pack(x))
y = outputs_of(m.out_stream, r.outputs)
np.testing.assert_array_equal(y, golden.execute(m, x).output)
print(json.dumps({"plan": plan, "words": len(img), "vectors": len(x), "mismatches": 0,
                  "cycles": r.cycles, "wall_s": round(time.time() - t, 1)}))
