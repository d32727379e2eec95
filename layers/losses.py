"""The paper's losses as Caffe Python layers (train-net contract; maths in ``layers.loss_math``).

``AMSoftmaxLossLayer`` (eq. 2)
    bottoms: embedding (N, D) or (N, D, 1, 1), label (N,), optional sample_weight (N,)
    tops:    loss (scalar), per_sample (N,)
    blobs:   class weights (num_classes, D), seeded normal rows scaled to unit length
``LocalStructureLossLayer`` (eqs. 3-5, one set of class centres)
    bottoms: embedding, label, optional sample_weight
    tops:    loss/center, loss/push, loss/glob_push (scalars), per_sample (N, 3)
    blobs:   centres (num_classes, D), seeded like the class weights; an iteration counter (1,)
             that each TRAIN forward advances (the smart-margin schedule reads it; as a
             parameter blob with ``lr_mult: 0`` it is saved in every snapshot, so a resumed run
             continues the schedule; float32 counts exactly up to 2^24 forwards)

Conventions, as Caffe's own loss layers:

- Each loss top's gradient is scaled by its upstream value ``top[k].diff[0]`` (Caffe puts the
  top's ``loss_weight`` there), so loss_weight 0.7 gives 0.7 times the gradient.
- Per-sample tops are outputs for hard-sample mining, not losses: they must have
  ``loss_weight: 0`` (a backward pass that finds a gradient on them raises).
- Parameter gradients are *added* to ``blob.diff`` (the solver clears them each iteration);
  bottom gradients are written; labels and weights get a zero gradient.
- A disabled local term outputs 0 and contributes no gradient whatever its loss_weight.
- Bad bottoms raise ``ValueError`` naming the layer, the problem and the sample: a NaN/inf
  embedding, a negative, non-integer or >= num_classes label, a negative or non-finite weight.
"""
from __future__ import annotations

import numpy as np

from layers import loss_math
from rmnet.config import parse_config
from layers.config import AMSoftmaxConfig, LocalStructureConfig

try:  # the maths imports without Caffe; the layer classes need it
    import caffe
except ImportError:  # pragma: no cover - layers are only instantiated by Caffe
    caffe = None


def init_table(num_classes: int, dim: int, seed: int) -> np.ndarray:
    """Class weights / centres: seeded standard-normal rows scaled to unit length (float32)."""
    table = np.random.default_rng(seed).standard_normal((num_classes, dim))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return table.astype(np.float32)


def embedding_dim(shape: tuple[int, ...], layer: str) -> int:
    """D of an (N, D) or (N, D, 1, 1) embedding blob; ValueError for other shapes."""
    if len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1)):
        return int(shape[1])
    raise ValueError(f"{layer}: bottom 'embedding' must be (N, D) or (N, D, 1, 1), got shape "
                     f"{tuple(shape)}")


def check_embedding(x: np.ndarray, layer: str) -> np.ndarray:
    """(N, D) float64 copy of the embedding; ValueError naming the first non-finite sample."""
    x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{layer}: the embedding of sample {i} contains NaN or inf "
                         f"({int(bad.sum())} bad samples in the batch of {len(x)}); the "
                         f"training diverged or the input is broken")
    return x


def check_labels(values: np.ndarray, num_classes: int, layer: str) -> np.ndarray:
    """int64 labels (N,); ValueError naming the first sample whose label is not an integer in
    [0, num_classes)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.isfinite(v) & (v == np.round(v))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"{layer}: label of sample {i} is {float(v[i]):g}, not an integer")
    out = (v < 0) | (v >= num_classes)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"{layer}: label of sample {i} is {int(v[i])}, outside [0, "
                         f"{num_classes}) (num_classes {num_classes} in param_str)")
    return v.astype(np.int64)


def check_sample_weights(values: np.ndarray, layer: str) -> np.ndarray:
    """float64 sample weights (N,); ValueError naming the first negative or non-finite one."""
    w = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{layer}: sample_weight of sample {i} is {float(w[i]):g}; weights must be "
                         f"finite and >= 0")
    return w


def check_counts(bottom, n: int, layer: str) -> None:
    names = ("label", "sample_weight")
    for i in range(1, len(bottom)):   # (Caffe's blob vectors do not slice)
        name, blob = names[i - 1], bottom[i]
        if blob.data.size != n:
            raise ValueError(f"{layer}: bottom '{name}' has {blob.data.size} values "
                             f"(shape {tuple(blob.data.shape)}) for a batch of {n} embeddings")


if caffe is not None:
    from layers.errors import reports_errors

    @reports_errors
    class _LossLayerBase(caffe.Layer):
        """Shared bottom/top checks of the two loss layers."""
        NAME = ""
        NUM_TOPS = 0
        CONFIG: type = object

        def _setup_common(self, bottom, top):
            name = self.NAME
            if len(bottom) not in (2, 3):
                raise ValueError(f"{name}: bottoms are embedding, label and optionally "
                                 f"sample_weight; got {len(bottom)} bottoms")
            if len(top) != self.NUM_TOPS:
                raise ValueError(f"{name}: needs {self.NUM_TOPS} tops, got {len(top)}")
            self.cfg = parse_config(self.CONFIG, self.param_str, name)
            self.dim = embedding_dim(bottom[0].data.shape, name)
            if len(self.blobs) == 0:
                self.blobs.add_blob(self.cfg.num_classes, self.dim)
                self.blobs[0].data[...] = init_table(self.cfg.num_classes, self.dim,
                                                     self.cfg.seed)
            self._fwd = None

        def _reshape_common(self, bottom, top):
            name = self.NAME
            dim = embedding_dim(bottom[0].data.shape, name)
            table = self.blobs[0].data.shape
            if table != (self.cfg.num_classes, dim):
                raise ValueError(f"{name}: the embedding has {dim} channels but the parameter "
                                 f"blob is {tuple(table)} (num_classes {self.cfg.num_classes})")
            check_counts(bottom, bottom[0].data.shape[0], name)
            self._fwd = None

        def _read_bottoms(self, bottom):
            name = self.NAME
            x = check_embedding(bottom[0].data, name)
            labels = check_labels(bottom[1].data, self.cfg.num_classes, name)
            weights = check_sample_weights(bottom[2].data, name) if len(bottom) == 3 else None
            return x, labels, weights

        def _check_backward(self, top, per_sample_top: int):
            name = self.NAME
            if self._fwd is None:
                raise RuntimeError(f"{name}: backward without a forward pass on this batch")
            if np.any(top[per_sample_top].diff != 0):
                raise ValueError(f"{name}: the per-sample top (top {per_sample_top}) received a "
                                 f"gradient; it is not a loss: give it loss_weight 0")

        @staticmethod
        def _zero_label_diffs(propagate_down, bottom):
            for i in range(1, len(bottom)):
                if propagate_down[i]:
                    bottom[i].diff[...] = 0

    @reports_errors
    class AMSoftmaxLossLayer(_LossLayerBase):
        """AM-Softmax (paper eq. 2); param_str: ``layers.config.AMSoftmaxConfig``."""
        NAME = "AMSoftmaxLossLayer"
        NUM_TOPS = 2
        CONFIG = AMSoftmaxConfig

        def setup(self, bottom, top):
            self._setup_common(bottom, top)

        def reshape(self, bottom, top):
            self._reshape_common(bottom, top)
            top[0].reshape()
            top[1].reshape(bottom[0].data.shape[0])

        def forward(self, bottom, top):
            x, labels, weights = self._read_bottoms(bottom)
            fwd = loss_math.am_softmax_forward(x, self.blobs[0].data, labels, self.cfg.scale,
                                               self.cfg.margin, weights)
            top[0].data[...] = fwd.loss
            top[1].data[...] = fwd.per_sample
            self._fwd = fwd

        def backward(self, top, propagate_down, bottom):
            self._check_backward(top, 1)
            g = float(top[0].diff.flat[0])
            if g != 0:
                grad_x, grad_w = loss_math.am_softmax_backward(self._fwd, g)
                self.blobs[0].diff[...] += grad_w
                if propagate_down[0]:
                    bottom[0].diff[...] = grad_x.reshape(bottom[0].diff.shape)
            elif propagate_down[0]:
                bottom[0].diff[...] = 0
            self._zero_label_diffs(propagate_down, bottom)

    @reports_errors
    class LocalStructureLossLayer(_LossLayerBase):
        """Center, Push and GlobPush (paper eqs. 3-5) with smart margins;
        param_str: ``layers.config.LocalStructureConfig``."""
        NAME = "LocalStructureLossLayer"
        NUM_TOPS = 4
        CONFIG = LocalStructureConfig

        def setup(self, bottom, top):
            self._setup_common(bottom, top)
            if len(self.blobs) == 1:
                self.blobs.add_blob(1)
                self.blobs[1].data[...] = 0
            self.margins = self.margins_at(0)

        @property
        def forward_count(self) -> int:
            """TRAIN forward passes so far (the counter blob)."""
            value = float(self.blobs[1].data.flat[0])
            if not (np.isfinite(value) and value >= 0 and value == int(value)):
                raise ValueError(f"{self.NAME}: the iteration counter blob holds {value!r}, not "
                                 f"a count: give the layer's second param lr_mult 0 and "
                                 f"decay_mult 0 (or the caffemodel is not from this layer)")
            return int(value)

        @property
        def iteration(self) -> int:
            """Completed solver iterations: forwards // iter_size."""
            return self.forward_count // self.cfg.iter_size

        def margins_at(self, iteration: int) -> dict[str, float]:
            """Push and GlobPush margins at ``iteration`` (smart-margin schedule or constant)."""
            sm = self.cfg.smart_margins
            out = {}
            for term in ("push", "glob_push"):
                final = self.cfg.final_margin(term)
                if sm is not None and term in sm.terms:
                    out[term] = loss_math.smart_margin(iteration, final, sm.start, sm.ramp_iters)
                else:
                    out[term] = final
            return out

        def reshape(self, bottom, top):
            self._reshape_common(bottom, top)
            if tuple(self.blobs[1].data.shape) != (1,):
                raise ValueError(f"{self.NAME}: the iteration counter blob must hold 1 value, "
                                 f"got shape {tuple(self.blobs[1].data.shape)}")
            for k in range(3):
                top[k].reshape()
            top[3].reshape(bottom[0].data.shape[0], 3)

        def forward(self, bottom, top):
            x, labels, weights = self._read_bottoms(bottom)
            self.margins = self.margins_at(self.iteration)
            cfg = self.cfg
            fwd = loss_math.local_structure_forward(
                x, self.blobs[0].data, labels, center=cfg.center, push=cfg.push,
                glob_push=cfg.glob_push, push_margin=self.margins["push"],
                glob_push_margin=self.margins["glob_push"], sample_weight=weights,
                reduction=cfg.reduction)
            for k, value in enumerate(fwd.losses):
                top[k].data[...] = value
            top[3].data[...] = fwd.per_sample
            self._fwd = fwd
            if self.phase == caffe.TRAIN:
                self.blobs[1].data[...] = self.forward_count + 1

        def backward(self, top, propagate_down, bottom):
            self._check_backward(top, 3)
            upstream = tuple(float(top[k].diff.flat[0]) for k in range(3))
            if any(upstream):
                grad_x, grad_c = loss_math.local_structure_backward(self._fwd, upstream)
                self.blobs[0].diff[...] += grad_c
                if propagate_down[0]:
                    bottom[0].diff[...] = grad_x.reshape(bottom[0].diff.shape)
            elif propagate_down[0]:
                bottom[0].diff[...] = 0
            self._zero_label_diffs(propagate_down, bottom)
