"""Usage: python bench/fashion_binarize.py TRAINED.bfm OUT.bfm

Make a bipolar-input twin of a trained binary MLP whose first layer takes 8-bit pixels:
pixels binarized at 128 to 0/255 are bipolar codes s = 2b-1, and acc = 255 * (S + sum w) / 2,
so the first layer's thresholds move to S-space exactly (integer)."""
import sys

import numpy as np

from bitfab.dense import Threshold
from bitfab.model import InputFormat, IntegerModel
from bitfab.quant.data import load_dataset
from bitfab.sim import golden

src, dst = sys.argv[1], sys.argv[2]
m = IntegerModel.load(src)
l0 = m.layers[0]
w = l0.weights.astype(np.int64)
W = w.sum(axis=1)
t = l0.output.thresholds.astype(np.int64)
d = l0.output.direction
# +1: 255(S+W)/2 >= t  <=>  S >= ceil(2t/255 - W);  -1: S <= floor(2t/255 - W)
up = -((-2 * t) // 255) - W[:, None]
down = (2 * t) // 255 - W[:, None]
nt = np.where(d[:, None] > 0, up, down)
l0b = l0.replace(input=InputFormat.bipolar(), output=Threshold(nt, d), name=l0.name)
mb = IntegerModel((l0b,) + tuple(m.layers[1:]), name="fashion-bin-784-256-256-10")
ds = load_dataset("fashion-mnist")
xb = np.where(ds.x_test >= 128, 1, -1)
x255 = np.where(ds.x_test >= 128, 255, 0)
a = golden.execute(m, x255).output
b = golden.execute(mb, xb).output
np.testing.assert_array_equal(a, b)
acc8 = (golden.execute(m, ds.x_test).output.argmax(1) == ds.y_test).mean()
accb = (b.argmax(1) == ds.y_test).mean()
print(f"8-bit input accuracy {acc8:.4f}, binarized-input twin {accb:.4f} on {len(xb)} test images")
mb.save(dst)
np.save(dst + ".xtest.npy", xb[:64])
