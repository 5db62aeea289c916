"""End-to-end training benchmark: a 784-256-256-10 ReLU MLP on the CPU.

Two measurements, four libraries:

1. **Epoch time** on 60,000 synthetic MNIST-shaped samples (784 float32
   features in [0, 1], mostly exactly 0 like MNIST; 10 learnable classes of
   digit-like strokes, shifted, overlaid with a fainter digit of another class
   and noise; from a seeded numpy Generator), batch 128,
   softmax cross-entropy, Adam(lr=1e-3); every library draws one permutation
   per epoch and gathers each batch by index. Median over several epochs
   after a warm-up epoch, then each one's accuracy on a held-out synthetic
   test set.
2. **Time to 0.97 test accuracy** on scikit-learn's digits
   (``fusedtrain.data.load_digits(seed=0)``: 64 features, 1438 train / 359
   test): the same MLP with 64 inputs, test accuracy after every epoch, until
   >= 0.97 or a cap on the epochs.

Competitors:

* ``fusedtrain``     ``Sequential([Dense(784, 256, "relu"), Dense(256, 256,
                     "relu"), Dense(256, 10)]).fit(x, y, epochs=1,
                     batch_size=128, progress=False, metrics=None)``: what a
                     user runs (digits: ``fit(validation_data=...)`` with a
                     callback that stops at the target)
* ``numpy MLP``      :class:`NumpyMLP`: a hand-written NumPy MLP, as fast as
                     honest NumPy goes: GEMMs through ``np.matmul(out=)``,
                     every buffer preallocated, in-place ufuncs, Adam over
                     one flat parameter arena in 10 chunked passes
* ``GEMMs only``     floors, not competitors: the 8 GEMMs of each step alone
                     (NumPy's OpenBLAS, torch.mm)
* ``torch foreach``  ``torch.nn`` + ``F.cross_entropy`` + autograd +
  ``torch fused``    ``torch.optim.Adam(foreach=True)`` / ``(fused=True)``;
                     index batching, no DataLoader; ``torch.set_num_threads``
* ``sklearn MLP``    ``MLPClassifier(hidden_layer_sizes=(256, 256),
                     solver="adam", batch_size=128, learning_rate_init=1e-3,
                     alpha=0)``, one ``partial_fit`` per epoch (it shuffles
                     internally)

fusedtrain, the NumPy MLP and torch start from the same weights (fusedtrain's
He-uniform initialisation, seed 0) and see the batches in the same order (a
``default_rng(seed)`` permutation per epoch, as ``fit`` draws it), so they
should learn alike; scikit-learn uses its own initialisation and shuffling.

Before anything is timed, fusedtrain, the NumPy MLP and both torch variants
take three training steps from identical weights and batches; after each
step the loss and every gradient are compared with ``fusedtrain.reference``'s
float32 dense and loss, and the parameters and both Adam moments with
``reference.optim.adam`` applied to the step's state and gradients
(:func:`validate_all`). A mismatch stops the run.

Timing: the libraries run in blocks, one epoch (or one whole time-to-accuracy
run) per block, in rotating order, with a short sleep before each block so the
previous library's thread pool stops spinning (spinning pools on 2 cores
stall one another). The 1-minute load average is checked first (the run waits
while it is above --load-threshold, up to --max-wait) and recorded after every
round.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/train.py [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import fusedtrain
from fusedtrain.nn import Dense, Sequential
from fusedtrain.reference import dense as ref_dense
from fusedtrain.reference import loss as ref_loss
from fusedtrain.reference import optim as ref_optim
from fusedtrain.train import Callback

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch rows become n/a
    torch = None

try:
    import sklearn
    from sklearn.neural_network import MLPClassifier
except ImportError:  # the sklearn row becomes n/a
    sklearn = None

F32 = np.float32
HIDDEN = (256, 256)
N_CLASSES = 10
BATCH = 128
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8

FT, NP_, T_FOREACH, T_FUSED, SK = ("fusedtrain", "numpy MLP", "torch foreach", "torch fused",
                                   "sklearn MLP")
GEMM_NP, GEMM_T = "GEMMs only (numpy)", "GEMMs only (torch)"  # floors, not competitors
TARGETS = {  # (measurement, peer): largest fusedtrain / peer time ratio
    ("epoch", NP_): 0.7,
    ("epoch", "torch"): 0.5,
    ("digits", NP_): 0.5,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def make_prototypes(rng: np.random.Generator, shift: int = 3, pool: int = 12,
                    per_class: int = 3) -> np.ndarray:
    """Digit-like class prototypes (10, (2 shift + 1)^2, 784) float32 in [0, 1].

    A pool of ``pool`` pen strokes (random walks of Gaussian dots, sigma 1
    px) on a 28x28 zero background; each class is ``per_class`` strokes of
    the pool (classes share strokes, so they overlap), in every translation
    by up to ``shift`` pixels."""
    yy, xx = np.mgrid[0:28, 0:28]
    strokes = np.zeros((pool, 28, 28))
    for k in range(pool):
        pos, ang, turn = rng.uniform(7, 21, 2), rng.uniform(0, 2 * np.pi), rng.normal(0, 0.3)
        for _ in range(rng.integers(8, 14)):
            strokes[k] += np.exp(-((yy - pos[0]) ** 2 + (xx - pos[1]) ** 2) / 2.0)
            ang += turn
            pos = np.clip(pos + 1.2 * np.array([np.sin(ang), np.cos(ang)]), 4, 23)
    protos = np.empty((N_CLASSES, 28, 28))
    for c in range(N_CLASSES):
        img = np.clip(1.5 * strokes[rng.choice(pool, per_class, replace=False)].sum(0), 0, 1)
        img[img < 0.1] = 0.0
        protos[c] = img
    shifted = [np.roll(protos, (dy, dx), axis=(1, 2))
               for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    return np.stack(shifted, 1).reshape(N_CLASSES, -1, 784).astype(F32)


def synthetic_mnist(n: int, protos: np.ndarray, rng: np.random.Generator):
    """n MNIST-shaped samples: x (n, 784) float32 in [0, 1], y (n,) int64.

    x = clip(s P[y, t] + a P[y', t'] + 0.3 N(0, 1) on the strokes, 0, 1):
    a randomly shifted prototype of class y with intensity s ~ U(0.75, 1),
    a fainter one of another class y' (a ~ U(0, 0.5)), noise only where
    there is ink. Like MNIST, most pixels are exactly 0 (about 73 %; MNIST
    81 %) and some never light up (18 %; MNIST 9 %). Learnable to about
    0.9, not to 1: overlapping classes and the second digit make some
    samples ambiguous."""
    y = rng.integers(0, N_CLASSES, n)
    other = (y + rng.integers(1, N_CLASSES, n)) % N_CLASSES
    shifts = protos.shape[1]
    x = protos[y, rng.integers(0, shifts, n)]
    x *= rng.uniform(0.75, 1.0, (n, 1)).astype(F32)
    mix = protos[other, rng.integers(0, shifts, n)]
    mix *= rng.uniform(0.0, 0.5, (n, 1)).astype(F32)
    x += mix
    del mix
    noise = rng.standard_normal((n, 784), dtype=F32)
    noise *= F32(0.3)
    noise *= x > 0
    x += noise
    del noise
    np.clip(x, 0.0, 1.0, out=x)
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------
# competitors
# ---------------------------------------------------------------------------
def ft_model(n_in: int, seed: int) -> Sequential:
    return Sequential([Dense(n_in, HIDDEN[0], activation="relu"),
                       Dense(HIDDEN[0], HIDDEN[1], activation="relu"),
                       Dense(HIDDEN[1], N_CLASSES)], seed=seed)


def accuracy_of(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == y))


class _StopAtAccuracy(Callback):
    """Stops fit once val_accuracy reaches the target; keeps the curve
    (accuracy, perf_counter) after every epoch."""

    def __init__(self, target):
        self.target = target
        self.curve = []

    def on_epoch_end(self, epoch, logs, model):
        self.curve.append((float(logs["val_accuracy"]), time.perf_counter()))
        if logs["val_accuracy"] >= self.target:
            model.stop_training = True


class Runner:
    """One library's model and optimizer on one training set.

    ``epoch()`` trains one epoch (one permutation, then batches gathered by
    index); ``scores(x)`` are the logits (or probabilities) for x;
    ``train_to(xt, yt, target, cap)`` trains until the test accuracy after an
    epoch is >= target or ``cap`` epochs ran, and returns the curve:
    (test accuracy, time.perf_counter()) after every epoch.
    """

    name = ""

    def epoch(self) -> float:
        raise NotImplementedError

    def scores(self, x) -> np.ndarray:
        raise NotImplementedError

    def accuracy(self, x, y) -> float:
        return accuracy_of(self.scores(x), y)

    def first_moments(self) -> list:
        """Adam's first-moment arrays (for the subnormal count); [] if unknown."""
        return []

    def train_to(self, xt, yt, target, cap) -> list:
        curve = []
        for _ in range(cap):
            self.epoch()
            curve.append((self.accuracy(xt, yt), time.perf_counter()))
            if curve[-1][0] >= target:
                break
        return curve


class FusedtrainRunner(Runner):
    name = FT

    def __init__(self, x, y, seed):
        self.x, self.y, self.seed = x, y, seed
        self.model = ft_model(x.shape[1], seed)

    def epoch(self):
        h = self.model.fit(self.x, self.y, epochs=1, batch_size=BATCH, progress=False,
                           metrics=None, seed=self.seed)
        return h["loss"][-1]

    def scores(self, x):
        return self.model.predict(x)

    def first_moments(self):
        st = self.model.optimizer.state
        return [st[i]["exp_avg"] for i in st]

    def train_to(self, xt, yt, target, cap):
        stop = _StopAtAccuracy(target)
        self.model.fit(self.x, self.y, epochs=cap, batch_size=BATCH, progress=False,
                       seed=self.seed, validation_data=(xt, yt), metrics=("accuracy",),
                       callbacks=[stop])
        return stop.curve


class NumpyMLP:
    """A ReLU MLP with softmax cross-entropy and Adam in plain NumPy, written
    for speed: the fastest honest NumPy we could write.

    * every parameter is a view into one flat float32 arena, every gradient a
      view into another (same layout), and Adam's two moments are flat arrays
      too, so the optimizer is a handful of whole-array ufunc calls (no
      Python loop over tensors);
    * activations, gradients and the loss workspace are allocated once per
      batch size; GEMMs write into them with ``np.matmul(..., out=)`` (NumPy's
      OpenBLAS), bias and ReLU are in-place ufuncs;
    * the loss gradient is written over the logits in place; bias gradients
      are ``ones @ dz`` (a BLAS gemv, 3x faster than ``dz.sum(axis=0)``).

    Adam does 10 passes over the arena instead of torch's 13 or so, with the
    same math in exact arithmetic:

    * the moments are kept scaled, ``m' = m / (1 - b1)`` and ``v' = v / (1 -
      b2)``, so that ``m' = b1 m' + g`` and ``v' = b2 v' + g^2`` need no
      multiplication of g (2 and 3 passes instead of 3 and 4);
    * the bias corrections go into two scalars (Kingma & Ba's "more
      efficient" ordering, Algorithm 1 remark): p += c * m' / (sqrt(v') +
      eps'), c = -lr sqrt(bc2) (1 - b1) / (bc1 sqrt(1 - b2)),
      eps' = eps sqrt(bc2) / sqrt(1 - b2) (5 passes);
    * the passes run over chunks of 64K elements, so that the arrays a chunk
      touches stay in the L2 cache between passes (~4 % faster here than
      whole-array passes; smaller chunks lose to the per-call overhead).

    ``exp_avg()`` / ``exp_avg_sq()`` give the unscaled moments (for the
    validation).
    """

    CHUNK = 1 << 16

    def __init__(self, params, lr=LR, betas=BETAS, eps=EPS):
        sizes = [p.size for p in params]
        self.arena = np.empty(sum(sizes), F32)
        self.grad = np.zeros_like(self.arena)
        self.m = np.zeros_like(self.arena)
        self.v = np.zeros_like(self.arena)
        self.tmp = np.empty_like(self.arena)
        self.params, self.grads = [], []
        off = 0
        for p, n in zip(params, sizes):
            view = self.arena[off:off + n].reshape(p.shape)
            view[...] = p
            self.params.append(view)
            self.grads.append(self.grad[off:off + n].reshape(p.shape))
            off += n
        self.W, self.b = self.params[0::2], self.params[1::2]  # W (in, out), b (out,)
        self.dW, self.db = self.grads[0::2], self.grads[1::2]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self._bufs = {}
        n = self.arena.size
        self._chunks = [(self.grad[i:i + self.CHUNK], self.m[i:i + self.CHUNK],
                         self.v[i:i + self.CHUNK], self.arena[i:i + self.CHUNK],
                         self.tmp[i:i + self.CHUNK]) for i in range(0, n, self.CHUNK)]

    def _buffers(self, n):
        bufs = self._bufs.get(n)
        if bufs is None:
            acts = [np.empty((n, W.shape[1]), F32) for W in self.W]  # layer outputs
            dacts = [np.empty((n, W.shape[0]), F32) for W in self.W[1:]]  # d loss / d inputs
            masks = [np.empty((n, W.shape[0]), bool) for W in self.W[1:]]
            bufs = self._bufs[n] = (acts, dacts, masks, np.empty((n, 1), F32),
                                    np.empty(n, F32), np.arange(n), np.ones(n, F32))
        return bufs

    def forward(self, x, acts):
        a = x
        last = len(self.W) - 1
        for i, (W, b, h) in enumerate(zip(self.W, self.b, acts)):
            np.matmul(a, W, out=h)  # h (n, out) = a (n, in) @ W (in, out)
            h += b
            if i < last:
                np.maximum(h, 0, out=h)
            a = h
        return a

    def train_step(self, xb, yb) -> float:
        """One forward, backward and Adam step on (xb, yb); returns the loss."""
        n = xb.shape[0]
        acts, dacts, masks, rowmax, s, rows, ones = self._buffers(n)
        z = self.forward(xb, acts)  # logits (n, C)
        # softmax cross-entropy, mean over the batch; the gradient overwrites z
        np.max(z, axis=1, keepdims=True, out=rowmax)
        z -= rowmax
        picked = z[rows, yb]
        np.exp(z, out=z)
        np.sum(z, axis=1, out=s)
        loss = float(np.mean(np.log(s) - picked, dtype=np.float64))
        s *= n
        np.reciprocal(s, out=s)
        z *= s[:, None]  # softmax / n
        z[rows, yb] -= F32(1.0 / n)
        g = z
        for i in range(len(self.W) - 1, -1, -1):
            a_prev = xb if i == 0 else acts[i - 1]
            np.matmul(a_prev.T, g, out=self.dW[i])  # dW (in, out) = a.T @ g
            np.matmul(ones, g, out=self.db[i])  # db (out,) = column sums of g
            if i:
                d, mask = dacts[i - 1], masks[i - 1]
                np.matmul(g, self.W[i].T, out=d)  # d (n, in) = g @ W.T
                np.greater(a_prev, 0, out=mask)  # ReLU': the output is > 0 where z > 0
                np.multiply(d, mask, out=d)
                g = d
        self.adam()
        return loss

    def adam(self):
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        c = F32(-self.lr * bc2_sqrt * (1.0 - b1) / (bc1 * math.sqrt(1.0 - b2)))
        eps = F32(self.eps * bc2_sqrt / math.sqrt(1.0 - b2))
        b1, b2 = F32(b1), F32(b2)
        for g, m, v, p, tmp in self._chunks:
            m *= b1  # m' = b1 m' + g
            m += g
            v *= b2  # v' = b2 v' + g^2
            np.multiply(g, g, out=tmp)
            v += tmp
            np.sqrt(v, out=tmp)  # p += c m' / (sqrt(v') + eps')
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= c
            p += tmp

    def exp_avg(self):
        return self.m * F32(1.0 - self.betas[0])

    def exp_avg_sq(self):
        return self.v * F32(1.0 - self.betas[1])

    def predict(self, x, chunk=2048):
        out = np.empty((len(x), self.W[-1].shape[1]), F32)
        for s0 in range(0, len(x), chunk):
            xc = x[s0:s0 + chunk]
            acts = [np.empty((len(xc), W.shape[1]), F32) for W in self.W]
            out[s0:s0 + len(xc)] = self.forward(xc, acts)
        return out


class NumpyRunner(Runner):
    name = NP_

    def __init__(self, x, y, seed, init):
        self.x, self.y = x, y
        self.rng = np.random.default_rng(seed)  # the same permutations as fit's
        self.mlp = NumpyMLP(init)
        self._bufs = {}

    def _batch(self, idx):
        n = len(idx)
        bufs = self._bufs.get(n)
        if bufs is None:
            bufs = self._bufs[n] = (np.empty((n, self.x.shape[1]), F32), np.empty(n, np.int64))
        np.take(self.x, idx, axis=0, out=bufs[0])
        np.take(self.y, idx, axis=0, out=bufs[1])
        return bufs

    def epoch(self):
        n = len(self.x)
        order = self.rng.permutation(n)
        total = 0.0
        for s0 in range(0, n, BATCH):
            idx = order[s0:s0 + BATCH]
            xb, yb = self._batch(idx)
            total += self.mlp.train_step(xb, yb) * len(idx)
        return total / n

    def scores(self, x):
        return self.mlp.predict(x)

    def first_moments(self):
        return [self.mlp.m]  # m / (1 - b1)


def torch_mlp(init):
    """nn.Sequential of Linear/ReLU holding the weights ``init`` (W (in, out), b)."""
    layers = []
    W, b = init[0::2], init[1::2]
    for i, (w, bias) in enumerate(zip(W, b)):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(bias))
        layers.append(lin)
        if i < len(W) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_adam(model, variant):
    kw = {"fused": True} if variant == "fused" else {"foreach": True}
    return torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, **kw)


class TorchRunner(Runner):
    def __init__(self, x, y, seed, init, variant):
        self.name = T_FUSED if variant == "fused" else T_FOREACH
        self.X, self.Y = torch.from_numpy(x), torch.from_numpy(y)
        self.rng = np.random.default_rng(seed)
        self.model = torch_mlp(init)
        self.opt = torch_adam(self.model, variant)

    def epoch(self):
        model, opt, X, Y = self.model, self.opt, self.X, self.Y
        n = len(X)
        order = torch.from_numpy(self.rng.permutation(n))
        total = 0.0
        model.train()
        for s0 in range(0, n, BATCH):
            idx = order[s0:s0 + BATCH]
            xb, yb = X[idx], Y[idx]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        return total / n

    def scores(self, x):
        self.model.eval()
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()

    def first_moments(self):
        return [self.opt.state[p]["exp_avg"].numpy() for p in self.model.parameters()
                if p in self.opt.state]


class SklearnRunner(Runner):
    name = SK

    def __init__(self, x, y, seed):
        self.x, self.y = x, y
        self.clf = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam",
                                 alpha=0.0, batch_size=BATCH, learning_rate_init=LR,
                                 beta_1=BETAS[0], beta_2=BETAS[1], epsilon=EPS, shuffle=True,
                                 random_state=seed)
        self.classes = np.arange(N_CLASSES)

    def epoch(self):
        self.clf.partial_fit(self.x, self.y, classes=self.classes)
        return float(self.clf.loss_)

    def scores(self, x):
        return self.clf.predict_proba(x)

    def first_moments(self):
        return list(getattr(getattr(self.clf, "_optimizer", None), "ms", []))  # private


def subnormal_fraction(arrays) -> float | None:
    """Fraction of elements that are float32 subnormals (0 < |x| < 2^-126):
    arithmetic on them takes microcode assists, 10-20x slower here."""
    n = sum(a.size for a in arrays)
    if not n:
        return None
    tiny = np.finfo(F32).tiny
    return sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))) for a in arrays) / n


class GemmFloorRunner(Runner):
    """A floor, not a competitor: an epoch's worth (ceil(n / 128) steps) of
    the 8 GEMMs of a training step alone (forward x @ W for 3 layers;
    backward a.T @ g for 3 layers and g @ W.T for 2), into preallocated
    buffers, through NumPy's OpenBLAS or torch.mm. No bias, activation,
    loss, optimizer or gather: what no implementation over the same GEMM
    library can beat."""

    def __init__(self, x, y, seed, init, backend):
        self.name = GEMM_T if backend == "torch" else GEMM_NP
        self.steps = -(-len(x) // BATCH)
        rng = np.random.default_rng(seed)
        W = [np.ascontiguousarray(w) for w in init[0::2]]
        dims = [W[0].shape[0]] + [w.shape[1] for w in W]
        A = [np.ascontiguousarray(x[:BATCH])] + [np.empty((BATCH, d), F32) for d in dims[1:]]
        G = [rng.standard_normal((BATCH, d), dtype=F32) for d in dims]
        dW = [np.empty_like(w) for w in W]
        if backend == "torch":
            W, A, G, dW = ([torch.from_numpy(a) for a in arrs] for arrs in (W, A, G, dW))
            mm = torch.mm

            def step():
                for i in range(3):
                    mm(A[i], W[i], out=A[i + 1])
                for i in (2, 1, 0):
                    mm(A[i].T, G[i + 1], out=dW[i])
                    if i:
                        mm(G[i + 1], W[i].T, out=G[i])
        else:
            mm = np.matmul

            def step():
                for i in range(3):
                    mm(A[i], W[i], out=A[i + 1])
                for i in (2, 1, 0):
                    mm(A[i].T, G[i + 1], out=dW[i])
                    if i:
                        mm(G[i + 1], W[i].T, out=G[i])
        self._step = step

    def epoch(self):
        step = self._step
        for _ in range(self.steps):
            step()
        return math.nan

    def accuracy(self, x, y):
        return None


def make_runners(names, x, y, seed):
    """Fresh runners for ``names``: fusedtrain from ``seed``; the NumPy MLP and
    torch from a copy of fusedtrain's initial weights."""
    init = [p.copy() for p in ft_model(x.shape[1], seed).parameters()]
    out = {}
    for name in names:
        if name == FT:
            out[name] = FusedtrainRunner(x, y, seed)
        elif name == NP_:
            out[name] = NumpyRunner(x, y, seed, init)
        elif name in (T_FOREACH, T_FUSED):
            out[name] = TorchRunner(x, y, seed, init, "fused" if name == T_FUSED else "foreach")
        elif name == SK:
            out[name] = SklearnRunner(x, y, seed)
        elif name in (GEMM_NP, GEMM_T):
            out[name] = GemmFloorRunner(x, y, seed, init, "torch" if name == GEMM_T else "numpy")
    return out


# ---------------------------------------------------------------------------
# validation: three steps from identical weights against fusedtrain.reference
# ---------------------------------------------------------------------------
def reference_gradients(params, xb, yb):
    """The readable float32 definition of the loss and the gradients:
    reference.dense forward/backward and reference.loss.softmax_cross_entropy.
    ``params`` is [W1, b1, W2, b2, ...], W (in, out)."""
    W, b = params[0::2], params[1::2]
    acts = ["relu"] * (len(W) - 1) + ["identity"]
    a, saved = xb, []
    for w, bias, act in zip(W, b, acts):
        y_, z = ref_dense.dense_forward(a, w, bias, act)
        saved.append((a, z))
        a = y_
    loss, g = ref_loss.softmax_cross_entropy(a, yb)
    grads = [None] * len(params)
    for i in range(len(W) - 1, -1, -1):
        a_in, z = saved[i]
        g, dw, db = ref_dense.dense_backward(g, a_in, W[i], z, acts[i])
        grads[2 * i], grads[2 * i + 1] = dw, db
    return loss, grads


class _Side:
    """One competitor seen by the validation: its state before a step
    (params, exp_avg, exp_avg_sq as [W1, b1, ...], W (in, out)) and one
    training step on a batch, returning (loss, buffers after the step)."""

    def snapshot(self) -> dict:
        raise NotImplementedError

    def step(self, xb, yb):
        raise NotImplementedError


class _FtSide(_Side):
    def __init__(self, model):
        self.model = model

    def snapshot(self):
        params = [p.copy() for p in self.model.parameters()]
        opt = self.model.optimizer
        st = opt.state if opt is not None else {}
        return {"params": params,
                **{k: [st[i][k].copy() if i in st else np.zeros_like(p)
                       for i, p in enumerate(params)] for k in ("exp_avg", "exp_avg_sq")}}

    def step(self, xb, yb):  # one fit call on one batch is one training step
        h = self.model.fit(xb, yb, epochs=1, batch_size=BATCH, shuffle=False, progress=False,
                           metrics=None)
        st = self.model.optimizer.state
        n = len(self.model.parameters())
        return h["loss"][-1], {"grads": self.model.gradients(),
                               "params": self.model.parameters(),
                               "exp_avg": [st[i]["exp_avg"] for i in range(n)],
                               "exp_avg_sq": [st[i]["exp_avg_sq"] for i in range(n)]}


class _NumpySide(_Side):
    def __init__(self, mlp):
        self.mlp = mlp

    def _bufs(self):
        return {"params": self.mlp.params,
                "exp_avg": _views_like(self.mlp.exp_avg(), self.mlp.params),
                "exp_avg_sq": _views_like(self.mlp.exp_avg_sq(), self.mlp.params)}

    def snapshot(self):
        return {k: [a.copy() for a in v] for k, v in self._bufs().items()}

    def step(self, xb, yb):
        loss = self.mlp.train_step(xb, yb)
        return loss, {"grads": self.mlp.grads, **self._bufs()}


class _TorchSide(_Side):
    def __init__(self, model, opt):
        self.model, self.opt = model, opt

    @staticmethod
    def _np(i, t):  # torch keeps weights (out, in): transpose to (in, out)
        a = t.detach().numpy()
        return a.T.copy() if i % 2 == 0 else a.copy()

    def _bufs(self):
        ps = list(self.model.parameters())
        out = {"params": [self._np(i, p) for i, p in enumerate(ps)]}
        for k in ("exp_avg", "exp_avg_sq"):
            out[k] = [self._np(i, self.opt.state[p][k]) if p in self.opt.state
                      else np.zeros_like(out["params"][i]) for i, p in enumerate(ps)]
        return out

    def snapshot(self):
        return self._bufs()

    def step(self, xb, yb):
        loss = F.cross_entropy(self.model(torch.from_numpy(xb)), torch.from_numpy(yb))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        grads = [self._np(i, p.grad) for i, p in enumerate(self.model.parameters())]
        return loss.item(), {"grads": grads, **self._bufs()}


def _gemm_atol(expected):
    """Gradients come out of float32 GEMMs summing 128-256 products, whose
    rounding depends on the summation order: the absolute error allowed
    scales with the buffer's magnitude."""
    return max(H.ATOL_F32, 1e-5 * float(np.abs(expected).max(initial=0.0)))


def validate_all(x, y, seed, names, steps=3) -> dict:
    """``steps`` training steps of every competitor but scikit-learn from the
    same initial weights, on the same batches, each checked after every step
    in two parts against fusedtrain.reference:

    1. the loss and every gradient equal the reference's (reference.dense,
       reference.loss) at the competitor's weights before the step (float32
       GEMM tolerance: rtol 1e-5, atol 1e-5 * max|gradient|);
    2. params, exp_avg and exp_avg_sq after the step equal reference.optim.adam
       applied to the competitor's state before the step and its gradients
       (rtol 1e-5, atol 1e-6).

    Together: one step from identical weights and batch gives the same
    updated weights up to float32 rounding. (Comparing the updated weights
    of two competitors directly is ill-conditioned for the elements whose
    gradient is near Adam's eps = 1e-8: at step 1 the update is
    -lr g / (|g| + eps), whose derivative lr / eps = 1e5 turns a rounding
    difference of 1e-10 in g into 1e-5 in the weight. The direct difference
    is recorded, not asserted.)
    """
    model = ft_model(x.shape[1], seed)
    init = [p.copy() for p in model.parameters()]
    sides = {FT: _FtSide(model)}
    if NP_ in names:
        sides[NP_] = _NumpySide(NumpyMLP(init))
    for name, variant in ((T_FOREACH, "foreach"), (T_FUSED, "fused")):
        if name in names:
            tm = torch_mlp(init)
            sides[name] = _TorchSide(tm, torch_adam(tm, variant))
    worst = {name: {} for name in sides}
    direct = {name: [] for name in sides if name != FT}
    moved = math.inf
    for k in range(steps):
        xb = np.ascontiguousarray(x[k * BATCH:(k + 1) * BATCH])
        yb = np.ascontiguousarray(y[k * BATCH:(k + 1) * BATCH])
        after = {}
        for name, side in sides.items():
            pre = side.snapshot()
            loss, post = side.step(xb, yb)
            after[name] = [p.copy() for p in post["params"]]
            w = worst[name]
            ref_l, ref_g = reference_gradients(pre["params"], xb, yb)
            if not math.isclose(loss, ref_l, rel_tol=1e-5, abs_tol=1e-6):
                raise H.ValidationError(f"{name}: step {k + 1}: loss {loss!r}, expected {ref_l!r}")
            w["loss"] = max(w.get("loss", 0.0), abs(loss - ref_l))
            for i, (a, e) in enumerate(zip(post["grads"], ref_g)):
                err = H.check_close(f"{name}.grads[{i}] at step {k + 1}", a, e, atol=_gemm_atol(e))
                w["grads"] = max(w.get("grads", 0.0), err)
            for i, g in enumerate(post["grads"]):
                p, m, v = (pre[b][i].copy() for b in ("params", "exp_avg", "exp_avg_sq"))
                ref_optim.adam(p, np.array(g), m, v, step=k + 1, lr=LR, betas=BETAS, eps=EPS)
                moved = min(moved, float(np.abs(p - pre["params"][i]).max()))
                for buf, e in (("params", p), ("exp_avg", m), ("exp_avg_sq", v)):
                    err = H.check_close(f"{name}.{buf}[{i}] after step {k + 1}", post[buf][i], e)
                    w[buf] = max(w.get(buf, 0.0), err)
        for name in direct:  # recorded, not asserted (see the docstring)
            diffs = [np.abs(a - b) for a, b in zip(after[name], after[FT])]
            beyond = sum(int((d > H.ATOL_F32 + H.RTOL_F32 * np.abs(b)).sum())
                         for d, b in zip(diffs, after[FT]))
            direct[name].append({"step": k + 1, "max_abs_diff": max(float(d.max()) for d in diffs),
                                 "elements_beyond_allclose": beyond,
                                 "elements": sum(d.size for d in diffs)})
    # every tensor must move by far more than the tolerance, so that a
    # competitor that skipped the update could not pass
    if moved < 100 * H.ATOL_F32:
        raise H.ValidationError(f"a validation step moved a tensor by only {moved:g}")
    return {"steps": steps, "batch": BATCH, "rtol": H.RTOL_F32, "atol": H.ATOL_F32,
            "grad_atol": "max(1e-6, 1e-5 * max|reference gradient|) per tensor",
            "max_abs_err": worst, "smallest_largest_param_change": moved,
            "updated_params_vs_fusedtrain": direct}


def _views_like(flat, like):
    out, off = [], 0
    for p in like:
        out.append(flat[off:off + p.size].reshape(p.shape))
        off += p.size
    return out


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def wait_for_quiet(threshold, max_wait, poll=20.0) -> dict:
    """Polls the 1-minute load average every ``poll`` s until it is <=
    ``threshold`` or ``max_wait`` s have passed."""
    t0 = time.monotonic()
    polls = []
    while True:
        load = os.getloadavg()
        polls.append([round(time.monotonic() - t0, 1), *load])
        if load[0] <= threshold or time.monotonic() - t0 >= max_wait:
            break
        log(f"load average {load[0]:.2f} > {threshold}: waiting ({time.monotonic() - t0:.0f} s "
            f"of at most {max_wait:.0f} s)")
        time.sleep(poll)
    return {"threshold": threshold, "max_wait_s": max_wait, "waited_s": time.monotonic() - t0,
            "quiet": polls[-1][1] <= threshold, "load_at_start": polls[-1][1:], "polls": polls}


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        out = fn()
        return time.perf_counter_ns() - t0, out
    finally:
        gc.enable()


def time_epochs(runners: dict, rounds: int, idle: float) -> dict:
    """One warm-up epoch each, then ``rounds`` rounds of one timed epoch per
    library, the order rotating; ``idle`` s of sleep before every block."""
    names = list(runners)
    for name in names:
        time.sleep(idle)
        ns, loss = _timed(runners[name].epoch)
        log(f"  warm-up {name:18s} {ns / 1e9:7.3f} s  loss {loss:.4f}")
    raw = {n: [] for n in names}
    losses = {n: [] for n in names}
    loads = []
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(idle)
            ns, loss = _timed(runners[name].epoch)
            raw[name].append(ns)
            losses[name].append(float(loss))
        loads.append(list(os.getloadavg()))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {raw[n][-1] / 1e9:.3f} s"
                                                       for n in names)
            + f"  (load {loads[-1][0]:.2f})")
    return {"raw_ns": raw, "train_loss": losses, "loadavg_after_round": loads}


def time_to_accuracy(names, data, seed, target, cap, repeats, idle) -> dict:
    """``repeats`` rounds; in round r every library trains a fresh model from
    initialisation seed ``seed + r`` (built before the clock starts) until its
    test accuracy reaches ``target`` or ``cap`` epochs ran. (The epochs to a
    target depend on the initial weights; fusedtrain, NumPy and torch share
    them in each round.) The curve records the test accuracy and the elapsed
    time after every epoch, so the time to a lower accuracy can be read from
    the same runs (:func:`time_to`)."""
    (x, y), (xt, yt) = data
    curves = {n: [] for n in names}
    loads = []
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            runner = make_runners([name], x, y, seed + r)[name]
            time.sleep(idle)
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                curve = runner.train_to(xt, yt, target, cap)
            finally:
                gc.enable()
            curves[name].append([[acc, t - t0] for acc, t in curve])
        loads.append(list(os.getloadavg()))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {curves[n][-1][-1][1]:.3f} s/{len(curves[n][-1])} ep" for n in names)
            + f"  (load {loads[-1][0]:.2f})")
    return {"curves": curves, "loadavg_after_round": loads}


def time_to(curves, threshold) -> dict:
    """Per library: seconds and epochs to the first epoch with test accuracy
    >= ``threshold`` in each run (None where a run never got there), the
    median seconds and epochs counting a run that never got there as
    infinitely long (so "not reached" when half the runs or more did not),
    the median time per epoch and the best accuracy."""
    out = {}
    for name, runs in curves.items():
        secs, eps = [], []
        for run in runs:
            hit = next((i for i, (acc, _) in enumerate(run) if acc >= threshold), None)
            secs.append(None if hit is None else run[hit][1])
            eps.append(None if hit is None else hit + 1)
        rec = {"seconds": secs, "epochs": eps, "reached": [s is not None for s in secs],
               "best_accuracy": max(acc for run in runs for acc, _ in run),
               "per_epoch_s": float(np.median([run[-1][1] / len(run) for run in runs]))}
        med = float(np.median([math.inf if v is None else v for v in secs]))
        if math.isfinite(med):
            rec["median_s"] = med
            rec["median_epochs"] = float(np.median([math.inf if v is None else v for v in eps]))
        out[name] = rec
    return out


def profile_call(fn, top: int = 15) -> dict:
    """cProfile of one call of ``fn``: the ``top`` functions by own time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        where = func if fname == "~" else f"{Path(fname).name}:{line}({func})"
        rows.append({"function": where, "calls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["tottime_s"])
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return {"wall_s": wall, "top": rows[:top], "text": buf.getvalue()}


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def summarize_epochs(res: dict, n_samples: int) -> dict:
    out = {}
    raw = res["raw_ns"]
    for name, ns in raw.items():
        st = H._stats(ns)
        st["samples_per_s"] = n_samples / (st["median_ns"] / 1e9)
        out[name] = st
    if FT in raw:
        for name, st in out.items():
            st["ft_ratio"] = out[FT]["median_ns"] / st["median_ns"]
            st["ft_ratio_paired"] = float(np.median([f / p for f, p in zip(raw[FT], raw[name])]))
    return out


def best_torch(stats: dict):
    names = [n for n in (T_FOREACH, T_FUSED) if n in stats and "median_ns" in stats[n]]
    return min(names, key=lambda n: stats[n]["median_ns"]) if names else None


def target_rows(epoch_stats, digits, thresholds) -> list:
    """The issue's targets as rows: ratio of fusedtrain's time to the peer's.
    The digits target is read at the first threshold (the target accuracy);
    when a library did not reach it in every run, it is also read at the
    fallback threshold (marked as such)."""
    rows = []
    for (what, peer), limit in TARGETS.items():
        if what == "epoch":
            if peer == "torch":
                peer = best_torch(epoch_stats)
            if peer is None or FT not in epoch_stats or peer not in epoch_stats:
                continue
            ratio = epoch_stats[FT]["median_ns"] / epoch_stats[peer]["median_ns"]
            rows.append({"target": f"epoch time: fusedtrain ≤ {limit}× {peer}", "peer": peer,
                         "limit": limit, "ratio": ratio, "met": bool(ratio <= limit)})
            continue
        for k, thr in enumerate(thresholds):
            d = digits["at"][_key(thr)]
            if FT not in d or peer not in d:
                break
            ok = "median_s" in d[FT] and "median_s" in d[peer]
            ratio = d[FT]["median_s"] / d[peer]["median_s"] if ok else math.nan
            label = f"time to {thr:g} on digits: fusedtrain ≤ {limit}× {peer}"
            if k:
                label += f" (fallback: {thresholds[0]:g} not reached)"
            rows.append({"target": label, "peer": peer, "limit": limit, "ratio": ratio,
                         "threshold": thr, "met": bool(ratio <= limit) if ok else None})
            if ok:
                break
    return rows


def _key(threshold):
    return f"{threshold:g}"


def _t(ns):
    return H.format_ns(ns) if ns is not None and math.isfinite(ns) else "n/a"


def drift_note(ep: dict) -> str:
    raw, sub = ep["raw_ns"], ep.get("subnormal_exp_avg", {})
    firsts = ", ".join(f"{n} {_t(v[0])} → {_t(v[-1])}" for n, v in raw.items()
                       if n not in (GEMM_NP, GEMM_T))
    subs = ", ".join(f"{n} {100 * f:.1f} %" for n, f in sub.items() if f is not None)
    return ("Epoch times drift up during a run: Adam's first moment of a parameter whose "
            "gradient stays exactly 0 (dead ReLU units, pixels that seldom light up) decays by "
            "beta1 = 0.9 per step into float32 subnormals after ~750 steps, and arithmetic on "
            "subnormals is 10-20x slower on this CPU. First → last timed epoch: "
            f"{firsts}. Subnormal exp_avg elements after the last epoch: {subs}.")


def render(result: dict) -> str:
    cfg, info = result["config"], result["machine"]
    es, acc, digits = result["epoch"]["stats"], result["epoch"]["test_accuracy"], result["digits"]
    ft = info["fusedtrain"]
    rows = []
    for name, st in es.items():
        rows.append([name, _t(st["median_ns"]), f"{_t(st['p10_ns'])} – {_t(st['p90_ns'])}",
                     f"{st['samples_per_s']:,.0f}",
                     f"{st.get('ft_ratio', math.nan):.3f}" if name != FT else "1",
                     f"{st.get('ft_ratio_paired', math.nan):.3f}" if name != FT else "1",
                     f"{acc[name]:.4f}" if acc.get(name) is not None else "—"])
    thresholds = cfg["digits_thresholds"]
    drows = []
    for name in digits["curves"]:
        row = [name]
        for thr in thresholds:
            d = digits["at"][_key(thr)]
            r = d[name]
            n_ok, n_runs = sum(r["reached"]), len(r["reached"])
            runs = "" if n_ok == n_runs else f" ({n_ok}/{n_runs} runs)"
            if "median_s" in r:
                ratio = d[FT]["median_s"] / r["median_s"] if "median_s" in d.get(FT, {}) \
                    else math.nan
                row += [f"{r['median_s']:.3g} s{runs}", f"{r['median_epochs']:g}",
                        "1" if name == FT else f"{ratio:.3f}"]
            else:
                row += [f"not reached{runs}", "", "n/a"]
        r0 = digits["at"][_key(thresholds[0])][name]
        row += [f"{1e3 * r0['per_epoch_s']:.1f} ms", f"{r0['best_accuracy']:.4f}"]
        drows.append(row)
    dheads = ["library"]
    for thr in thresholds:
        dheads += [f"time to {thr:g}", "epochs", "ft / this"]
    dheads += ["per epoch", "best test acc"]
    trows = [[t["target"], f"{t['ratio']:.3f}" if math.isfinite(t["ratio"]) else "n/a",
              "✓" if t["met"] else ("✗" if t["met"] is False else "n/a")]
             for t in result["targets"]]
    load = result["load"]
    ep_loads = [l[0] for l in result["epoch"]["loadavg_after_round"]]
    parts = [
        "# fusedtrain end-to-end training benchmark (CPU, float32)",
        "",
        f"{info['date']} · {info['cpu_model']} · {info['cpu_affinity']} CPUs · fusedtrain "
        f"{ft['version']} ({ft['simd']}, {info['fusedtrain_threads']} threads, {ft['blas']}) · "
        f"torch {info.get('torch')} ({info.get('torch_threads')} threads) · numpy {info['numpy']} "
        f"(BLAS threads {info.get('numpy_blas_threads')}) · scikit-learn {info.get('sklearn')} · "
        f"python {info['python']}",
        "",
        f"Command: `{' '.join(cfg['command'])}` · {result['elapsed_s']:.0f} s. "
        f"Load average (1 min): {load['load_at_start'][0]:.2f} at start (after waiting "
        f"{load['waited_s']:.0f} s{'' if load['quiet'] else ', still above the threshold'}), "
        f"{max(ep_loads):.2f} highest after an epoch round, {info['loadavg_end'][0]:.2f} at end, "
        f"on {info['cpu_affinity']} CPUs.",
        "",
        f"## Epoch time: {cfg['samples']:,} synthetic MNIST-shaped samples, "
        "784-256-256-10 ReLU MLP",
        "",
        f"Batch {BATCH}, softmax cross-entropy, Adam(lr={LR:g}); median of {cfg['rounds']} epochs "
        f"per library after one warm-up epoch, libraries in rotating blocks of one epoch. "
        f"**ft / this** = fusedtrain's median epoch time / this library's (< 1: fusedtrain "
        f"faster); *paired* = median of the per-round ratios. Test accuracy on "
        f"{cfg['test_samples']:,} held-out synthetic samples after all "
        f"{cfg['rounds'] + 1} epochs. *GEMMs only* rows are floors, not competitors: the 8 "
        f"GEMMs of each step alone (no bias, activation, loss, Adam or gather), through NumPy's "
        f"OpenBLAS or torch.mm.",
        "",
        H.markdown_table(["library", "epoch (median)", "p10 – p90", "samples/s", "ft / this",
                          "paired", "test acc"], rows),
        "",
        drift_note(result["epoch"]),
        "",
        f"## Time to {cfg['target_acc']} test accuracy: digits (64 inputs, "
        f"{cfg['digits_train']} train / {cfg['digits_test']} test)",
        "",
        f"Same MLP with 64 inputs, batch {BATCH}, Adam(lr={LR:g}); test accuracy after every "
        f"epoch, stop at ≥ {cfg['target_acc']} or {cfg['digits_cap']} epochs. Wall time from the "
        f"start of training to the end of the first epoch whose test accuracy reaches the "
        f"threshold, evaluation included (the model is built before the clock starts). Run r "
        f"starts from initialisation seed {cfg['seed']} + r, the same weights for fusedtrain, "
        f"NumPy and torch (scikit-learn: random_state {cfg['seed']} + r); median of "
        f"{cfg['digits_repeats']} run(s) per library in rotating blocks, a run that never "
        f"reached the threshold counted as infinitely long ((k/n runs): only k of n reached it). "
        + (f"The time to {thresholds[1]:g} (the fallback threshold) is read from the same runs. "
           if len(thresholds) > 1 else "")
        + "*per epoch*: median over the runs of run time / epochs run.",
        "",
        H.markdown_table(dheads, drows),
        "",
        "## Targets (reported, not asserted)",
        "",
        H.markdown_table(["target", "ratio", "met"], trows, "lrc"),
        "",
        "Validation before timing: fusedtrain, the NumPy MLP and torch (foreach, fused) took "
        f"{result['validation']['steps']} Adam steps from identical weights and batches; after "
        "each, the loss and every gradient matched fusedtrain.reference's float32 dense and "
        "loss at the step's weights (rtol 1e-5, atol 1e-5·max|gradient|), and params, exp_avg "
        "and exp_avg_sq matched reference.optim.adam applied to the step's state and gradients "
        "(rtol 1e-5, atol 1e-6); largest errors in train.json. fusedtrain, NumPy and torch "
        "start from the same weights and see the same batch order; scikit-learn uses its own "
        "initialisation and shuffling (and puts eps outside Adam's bias correction). "
        "See bench/README.md.",
        "",
    ]
    profs = result.get("profile") or {}
    titles = {"epoch": f"one epoch of {cfg['samples']:,} synthetic samples",
              "digits": "20 digits epochs with validation (fit, as timed above)"}
    if profs:
        parts += ["## Where fusedtrain's time goes (cProfile, top 12 by own time)", ""]
    for key, prof in profs.items():
        parts += [f"{titles[key]}: {prof['wall_s']:.3f} s under the profiler", "",
                  H.markdown_table(["function", "calls", "tottime", "cumtime"],
                                   [[r["function"], r["calls"], f"{r['tottime_s']:.3f} s",
                                     f"{r['cumtime_s']:.3f} s"] for r in prof["top"][:12]]),
                  ""]
    return "\n".join(parts)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {FT: "#d62728", NP_: "#1f77b4", T_FOREACH: "#ff7f0e", T_FUSED: "#ffbb78",
              SK: "#2ca02c", GEMM_NP: "#c7c7c7", GEMM_T: "#c7c7c7"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    es = result["epoch"]["stats"]
    names = list(es)
    med = [es[n]["median_ns"] / 1e9 for n in names]
    err = [[(es[n]["median_ns"] - es[n]["p10_ns"]) / 1e9 for n in names],
           [(es[n]["p90_ns"] - es[n]["median_ns"]) / 1e9 for n in names]]
    ax = axes[0]
    bars = ax.bar(names, med, yerr=err, capsize=4, color=[colors.get(n, "grey") for n in names])
    for b, n in zip(bars, names):
        if n in (GEMM_NP, GEMM_T):
            b.set_hatch("//")
    for b, m, hi in zip(bars, med, err[1]):
        ax.annotate(f"{m:.3g} s", (b.get_x() + b.get_width() / 2, m + hi), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    cfg = result["config"]
    ax.set_title(f"epoch time, {cfg['samples']:,} × 784, batch {BATCH} (median, p10–p90)",
                 fontsize=10)
    ax.set_ylabel("seconds per epoch")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1]
    thresholds = cfg["digits_thresholds"]
    names = list(result["digits"]["curves"])
    width = 0.8 / len(thresholds)
    top = 0.0
    for k, thr in enumerate(thresholds):
        d = result["digits"]["at"][_key(thr)]
        vals = [d[n].get("median_s", 0.0) for n in names]
        top = max(top, *vals)
        xs = np.arange(len(names)) + (k - (len(thresholds) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, color=[colors.get(n, "grey") for n in names],
                      alpha=1.0 if k == 0 else 0.55, hatch=None if k == 0 else "//",
                      label=f"to {thr:g}" + ("" if k == 0 else " (fallback)"))
        for b, n, v in zip(bars, names, vals):
            txt = (f"{v:.2f} s\n{d[n]['median_epochs']:g} ep" if "median_s" in d[n]
                   else "not\nreached")
            ax.annotate(txt, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, (top or 1.0) * 1.3)
    ax.set_title(f"time to test accuracy, digits (median of {cfg['digits_repeats']})", fontsize=10)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle("784/64-256-256-10 ReLU MLP, Adam(lr=1e-3), CPU", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def numpy_blas_controller():
    """threadpoolctl's controller of NumPy's own OpenBLAS (not fusedtrain's)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    ctl = ThreadpoolController()
    libs = [c.filepath for c in ctl.lib_controllers
            if c.user_api == "blas" and "numpy" in c.filepath]
    return ctl.select(filepath=libs) if libs else None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test (< 60 s on a quiet machine): 10,000 samples, 3 rounds, "
                         "1 digits run capped at 30 epochs, no waiting for a quiet machine; "
                         "writes train_quick.{md,json,png}")
    ap.add_argument("--samples", type=int, help="synthetic training samples (default 60000)")
    ap.add_argument("--test-samples", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, help="timed epochs per library (default 9)")
    ap.add_argument("--digits-repeats", type=int, help="time-to-accuracy runs per library "
                    "(default 7)")
    ap.add_argument("--digits-cap", type=int, help="epoch cap on digits (default 60, 30 with "
                    "--quick)")
    ap.add_argument("--target-acc", type=float, default=0.97)
    ap.add_argument("--fallback-acc", type=float, default=0.96,
                    help="a second digits threshold, read from the same runs (0: none)")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads of fusedtrain, torch and NumPy's BLAS (default 2)")
    ap.add_argument("--idle", type=float, default=0.25,
                    help="seconds of sleep before each block (thread pools go quiet)")
    ap.add_argument("--load-threshold", type=float, default=1.5)
    ap.add_argument("--max-wait", type=float,
                    help="seconds to wait for the load to drop (default 300, 0 with --quick)")
    ap.add_argument("--skip", nargs="+", default=[], choices=["torch", "sklearn"])
    ap.add_argument("--no-floor", action="store_true",
                    help="do not time the GEMMs-only floors")
    ap.add_argument("--profile", action="store_true",
                    help="profile one fusedtrain epoch even if every target is met")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", help="output file stem (default train, or train_quick)")
    args = ap.parse_args(argv)
    samples = args.samples or (10_000 if args.quick else 60_000)
    rounds = args.rounds or (3 if args.quick else 9)
    d_repeats = args.digits_repeats or (1 if args.quick else 7)
    d_cap = args.digits_cap or (30 if args.quick else 60)
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if args.quick else 300.0)
    for name, v in (("--samples", samples), ("--rounds", rounds),
                    ("--digits-repeats", d_repeats), ("--digits-cap", d_cap),
                    ("--threads", args.threads)):
        if v < 1:
            ap.error(f"{name} must be >= 1; received {v}")
    thresholds = [args.target_acc] + ([args.fallback_acc] if 0 < args.fallback_acc
                                      < args.target_acc else [])
    if samples < 3 * BATCH:
        ap.error(f"--samples must be >= {3 * BATCH} (validation uses 3 batches); "
                 f"received {samples}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            log(f"warning: {var} is set (slows NumPy's BLAS here); run with "
                "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")

    names = [FT, NP_]
    if torch is not None and "torch" not in args.skip:
        names += [T_FOREACH, T_FUSED]
    if sklearn is not None and "sklearn" not in args.skip:
        names.append(SK)

    load = wait_for_quiet(args.load_threshold, max_wait)
    fusedtrain.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    npblas = numpy_blas_controller()
    limiter = npblas.limit(limits=args.threads) if npblas is not None else None  # noqa: F841
    info = H.machine_info()
    info["numpy_blas_threads"] = ([c.num_threads for c in npblas.lib_controllers]
                                  if npblas is not None else None)
    info["sklearn"] = sklearn.__version__ if sklearn is not None else None
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = threadpool_info()
    except ImportError:
        pass
    log(f"{info['cpu_model']}, {info['cpu_affinity']} CPUs, load {load['load_at_start'][0]:.2f}; "
        f"competitors: {', '.join(names)}")
    start = time.perf_counter()

    rng = np.random.default_rng(args.seed)
    protos = make_prototypes(rng)
    x, y = synthetic_mnist(samples, protos, rng)
    xt, yt = synthetic_mnist(args.test_samples, protos, rng)

    log("validating: 3 steps of each competitor against fusedtrain.reference ...")
    val = validate_all(x, y, args.seed, names)
    for name, errs in val["max_abs_err"].items():
        log(f"  ok {name:14s} " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # sklearn: max_iter notices
        log(f"epoch time: {samples:,} samples, 1 warm-up + {rounds} rounds")
        floors = [] if args.no_floor else [GEMM_NP] + ([GEMM_T] if T_FUSED in names else [])
        runners = make_runners(names + floors, x, y, args.seed)
        ep = time_epochs(runners, rounds, args.idle)
        ep["stats"] = summarize_epochs(ep, samples)
        ep["test_accuracy"] = {n: r.accuracy(xt, yt) for n, r in runners.items()}
        runners = {n: r for n, r in runners.items() if n not in (GEMM_NP, GEMM_T)}
        ep["subnormal_exp_avg"] = {n: subnormal_fraction(r.first_moments())
                                   for n, r in runners.items()}
        log("  test accuracy: " + ", ".join(f"{n} {a:.4f}" for n, a in ep["test_accuracy"].items()
                                            if a is not None))

        (dx, dy), (dxt, dyt) = fusedtrain.data.load_digits(seed=0)
        log(f"time to {args.target_acc} on digits: {d_repeats} run(s) per library, cap "
            f"{d_cap} epochs")
        digits = time_to_accuracy(names, ((dx, dy), (dxt, dyt)), args.seed, args.target_acc,
                                  d_cap, d_repeats, args.idle)
        digits["at"] = {_key(t): time_to(digits["curves"], t) for t in thresholds}

    targets = target_rows(ep["stats"], digits, thresholds)
    profile = None
    if args.profile or any(t["met"] is False for t in targets):
        log("profiling one fusedtrain epoch and one digits run of 20 epochs (cProfile) ...")
        time.sleep(args.idle)
        profile = {"epoch": profile_call(runners[FT].epoch)}
        time.sleep(args.idle)
        dr = make_runners([FT], dx, dy, args.seed)[FT]
        profile["digits"] = profile_call(lambda: dr.train_to(dxt, dyt, 1.01, 20))
    elapsed = time.perf_counter() - start
    info["loadavg_end"] = list(os.getloadavg())

    result = {
        "machine": info,
        "config": {"command": ["python3", "bench/train.py", *argv], "samples": samples,
                   "test_samples": args.test_samples, "rounds": rounds,
                   "digits_repeats": d_repeats, "digits_cap": d_cap,
                   "target_acc": args.target_acc, "digits_thresholds": thresholds,
                   "threads": args.threads, "idle_s": args.idle,
                   "seed": args.seed, "quick": args.quick, "batch_size": BATCH, "lr": LR,
                   "betas": BETAS, "eps": EPS, "hidden": HIDDEN, "competitors": names,
                   "digits_train": len(dx), "digits_test": len(dxt),
                   "data": "synthetic digit-like: clip(s P[y,t] + a P[y',t'] + 0.3 N(0,1) on "
                           "ink, 0, 1), s ~ U(0.75, 1), a ~ U(0, 0.5), 10 classes of 3 strokes "
                           "from a pool of 12, shifts up to 3 px (make_prototypes)",
                   "pixels_zero": float(np.mean(x == 0)),
                   "pixels_never_lit": float(np.mean(~(x > 0).any(axis=0)))},
        "load": load,
        "validation": val,
        "epoch": ep,
        "digits": digits,
        "targets": targets,
        "profile": profile,
        "elapsed_s": elapsed,
    }
    text = render(result)
    stem = args.name or ("train_quick" if args.quick else "train")
    md = H.write_text(args.out / f"{stem}.md", text)
    js = H.write_json(args.out / f"{stem}.json", result)
    png = args.out / f"{stem}.png"
    plot(result, png)
    print(text)
    log(f"wrote {md}, {js} and {png} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
