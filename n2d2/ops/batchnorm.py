"""Spatial batch normalisation over NCHW (statistics per channel over N, H, W).

Learn mode normalises with the batch statistics (biased variance, as N2D2's BatchNormCell_Frame)
and folds them into the moving averages; test mode normalises with the moving averages.

Synchronised (attribute `synchronised`, set on the training graph by `DeepNetCell.fit(...,
sync_batchnorm=True)` under data parallelism): the statistics are those of the global batch,
all ranks together. The forward sums the per-channel sums of x and x^2 and the element count
over the ranks of `n2d2.distributed.sync_group()` (one all-reduce of 2C+1 float64), the
backward the per-channel sums of dy and dy*xhat (one of 2C); the parameter gradients stay local
(the gradient all-reduce sums them). Such a node runs on the reference in every backend (the
compiled kernels around it run as before): it needs the collective between two kernels.
"""
import numpy as np

from n2d2 import distributed
from n2d2.backend import array_module, to_host
from n2d2.ir import lowering as low
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register


def _c(v):
    """A per-channel vector shaped to broadcast over NCHW."""
    return v.reshape(1, -1, 1, 1)


def batch_statistics(x):
    """(mean, biased variance) per channel."""
    mean = x.mean(axis=(0, 2, 3))
    centered = x - _c(mean)
    var = (centered * centered).mean(axis=(0, 2, 3))
    return mean, var


def batchnorm_forward_train(x, scales, biases, epsilon):
    """y = scale * (x - mean_B) / sqrt(var_B + eps) + bias; returns (y, ctx, mean_B, var_B)."""
    xp = array_module(x)
    mean, var = batch_statistics(x)
    inv_std = 1 / xp.sqrt(var + x.dtype.type(epsilon))
    xhat = (x - _c(mean)) * _c(inv_std)
    y = xhat * _c(scales.astype(x.dtype)) + _c(biases.astype(x.dtype))
    return y, (xhat, inv_std), mean, var


def batchnorm_backward_train(dy, ctx, scales):
    """(dx, dscales, dbiases) of batchnorm_forward_train (the statistics depend on x)."""
    xhat, inv_std = ctx
    dbias = dy.sum(axis=(0, 2, 3))
    dscale = (dy * xhat).sum(axis=(0, 2, 3))
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    k = scales.astype(dy.dtype) * inv_std / dy.dtype.type(m)
    dx = _c(k) * (dy * dy.dtype.type(m) - _c(dbias) - xhat * _c(dscale))
    return dx, dscale, dbias


_AXES = (0, 2, 3)


def _sum_over_ranks(group, values, what):
    """Sum float64 per-channel vectors over the ranks of `group` (host numpy)."""
    buf = np.ascontiguousarray(to_host(values), dtype=np.float64)
    return group.allreduce_sum(buf, what=what)


def batchnorm_forward_train_sync(x, scales, biases, epsilon, group, what="BatchNorm"):
    """batchnorm_forward_train with the statistics of the global batch (every rank of `group`);
    returns (y, ctx, mean_B, var_B, count_B)."""
    xp = array_module(x)
    c = x.shape[1]
    x64 = x.astype(np.float64)
    local = xp.concatenate([x64.sum(axis=_AXES), (x64 * x64).sum(axis=_AXES),
                            xp.asarray([x.shape[0] * x.shape[2] * x.shape[3]], dtype=np.float64)])
    sums = _sum_over_ranks(group, local, f"{what} statistics all-reduce")
    count = float(sums[2 * c])
    mean64 = sums[:c] / count
    var64 = np.maximum(sums[c:2 * c] / count - mean64 * mean64, 0.0)
    mean, var = xp.asarray(mean64.astype(x.dtype)), xp.asarray(var64.astype(x.dtype))
    inv_std = 1 / xp.sqrt(var + x.dtype.type(epsilon))
    xhat = (x - _c(mean)) * _c(inv_std)
    y = xhat * _c(scales.astype(x.dtype)) + _c(biases.astype(x.dtype))
    return y, (xhat, inv_std), mean, var, count


def batchnorm_backward_train_sync(dy, ctx, scales, group, count, what="BatchNorm"):
    """(dx, dscales, dbiases) of batchnorm_forward_train_sync: dx from the sums of dy and dy*xhat
    over the global batch; dscales and dbiases of this rank's batch (summed with the gradients)."""
    xp = array_module(dy)
    xhat, inv_std = ctx
    c = dy.shape[1]
    dbias = dy.sum(axis=_AXES)
    dscale = (dy * xhat).sum(axis=_AXES)
    sums = _sum_over_ranks(group, xp.concatenate([dbias.astype(np.float64), dscale.astype(np.float64)]),
                           f"{what} backward all-reduce")
    dbias_all, dscale_all = (xp.asarray(sums[:c].astype(dy.dtype)), xp.asarray(sums[c:].astype(dy.dtype)))
    m = dy.dtype.type(count)
    k = scales.astype(dy.dtype) * inv_std / m
    dx = _c(k) * (dy * m - _c(dbias_all) - xhat * _c(dscale_all))
    return dx, dscale, dbias


def batchnorm_forward_infer(x, scales, biases, means, variances, epsilon):
    """Normalisation with fixed statistics; returns (y, ctx)."""
    xp = array_module(x)
    inv_std = 1 / xp.sqrt(variances.astype(x.dtype) + x.dtype.type(epsilon))
    xhat = (x - _c(means.astype(x.dtype))) * _c(inv_std)
    y = xhat * _c(scales.astype(x.dtype)) + _c(biases.astype(x.dtype))
    return y, (xhat, inv_std)


def batchnorm_backward_infer(dy, ctx, scales):
    """(dx, dscales, dbiases) of batchnorm_forward_infer (statistics are constants)."""
    xhat, inv_std = ctx
    dbias = dy.sum(axis=(0, 2, 3))
    dscale = (dy * xhat).sum(axis=(0, 2, 3))
    dx = dy * _c(scales.astype(dy.dtype) * inv_std)
    return dx, dscale, dbias


def update_moving_statistics(means, variances, batch_mean, batch_var, momentum, count, unbiased=False):
    """In place: running = (1 - momentum) * running + momentum * batch statistic.

    N2D2's CPU cell folds the biased batch variance (`unbiased=False`); cuDNN (N2D2's GPU cell)
    and PyTorch fold the unbiased one, var * count / (count - 1).
    """
    if unbiased and count > 1:
        batch_var = batch_var * (count / (count - 1.0))
    means *= 1.0 - momentum
    means += momentum * batch_mean.astype(means.dtype)
    variances *= 1.0 - momentum
    variances += momentum * batch_var.astype(variances.dtype)


# -- the IR op ------------------------------------------------------------
@register
class BatchNorm(OpDef):
    """attrs: epsilon, momentum, unbiased; params scales, biases (trained), means, variances
    (moving statistics, updated in place by a training forward)."""

    name = "BatchNorm"
    per_sample = True
    onnx_names = ("BatchNormalization",)
    ini_names = ("BatchNorm",)
    max_inputs = None
    carries_activation = True
    epilogue_anchor = True
    absorbs_chain = "BatchNormEpilogue"
    params = ("scales", "biases", "means", "variances")
    trainable = ("scales", "biases")

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        if param_shapes["scales"][0] != shape[1]:
            raise ValueError(f"{param_shapes['scales'][0]} scales for {shape[1]} channels")
        return [shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        eps = attrs["epsilon"]
        shapes = [a.shape for a in xs]
        if training and attrs["momentum"] != 0.0:
            group = distributed.sync_group() if attrs.get("synchronised") else None
            if group is not None and group.size > 1:
                y, ctx, mean, var, count = batchnorm_forward_train_sync(x, params["scales"], params["biases"], eps,
                                                                        group)
                mode = (group, count)
            else:
                y, ctx, mean, var = batchnorm_forward_train(x, params["scales"], params["biases"], eps)
                count = x.shape[0] * x.shape[2] * x.shape[3]
                mode = True
            update_moving_statistics(params["means"], params["variances"], mean, var, attrs["momentum"],
                                     count, unbiased=attrs.get("unbiased", False))
            return y, (ctx, mode, shapes)
        y, ctx = batchnorm_forward_infer(x, params["scales"], params["biases"], params["means"],
                                         params["variances"], eps)
        return y, (ctx, False, shapes)

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, train, shapes = saved
        if isinstance(train, tuple):   # synchronised: (group, global count)
            dx, dscale, dbias = batchnorm_backward_train_sync(dy, ctx, params["scales"], *train)
        else:
            backward = batchnorm_backward_train if train else batchnorm_backward_infer
            dx, dscale, dbias = backward(dy, ctx, params["scales"])
        grads = {"scales": dscale.astype(np.float32), "biases": dbias.astype(np.float32)}
        return _split_channels(dx, shapes, needs), grads

    needs_all_param_grads = True   # its dx needs dscale and dbias even when they are frozen

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        if g.get("TRAIN"):   # the batch statistics, saved for the backward
            ctx.aux["stats"] = aux_slot(f"{node}.stats", (2 * g["C"],), stats_kind)

    # -- lowering --------------------------------------------------------------------------------
    SYNCHRONISED = ("synchronised BatchNorm: the statistics are all-reduced over the ranks between kernels; "
                    "the reference runs it")

    def lower_c(self, graph, node, training):
        if training and graph.attrs(node).get("synchronised"):
            return low.Unsupported(self.SYNCHRONISED)
        ins, _ = low.shapes(graph, node)
        chans = low.concat_channels(ins)   # several inputs: concatenated along channels
        if chans is None:
            return low.Unsupported(f"inputs {[list(s) for s in ins]} differ on batch or H, W")
        n, _, h, w = low.nchw(ins[0])
        c = sum(ch["C"] for ch in chans)
        train = training and graph.attrs(node)["momentum"] != 0.0
        return dict(N=n, C=c, HW=h * w, M=n * h * w, TRAIN=train, inputs=chans,
                    PAR=n * c * h * w >= low.PARALLEL_MIN_ELEMENTS)

    def lower_cuda(self, graph, node, training):
        if training and graph.attrs(node).get("synchronised"):
            return low.Unsupported(self.SYNCHRONISED)
        ins, _ = low.shapes(graph, node)
        n, c, h, w = low.nchw(ins[0])
        return low.one_input(ins, self.name) or dict(N=n, C=c, HW=h * w, M=n * h * w, SIZE=n * c * h * w,
                                                     TRAIN=bool(training and graph.attrs(node)["momentum"] != 0.0))

    def plan_cuda_forward(self, n, g, k):
        specs = []
        if g["TRAIN"]:
            s = k.reduction_splits(g["C"], g["M"])
            part = "((double *)(arena + N2D2_SCRATCH_OFF))"
            specs.append(k.kernel("stats", (g["C"] * s, 1, 1), barrier=True, S=s, CH=k.ceil(g["M"], s), part=part,
                                  scratch=16 * g["C"] * s))
            specs.append(k.kernel("finalize", (k.ceil(g["C"], k.THREADS), 1, 1), S=s, part=part))
        specs.append(k.elementwise("norm", g["SIZE"], C=g["C"], HW=g["HW"]))
        return specs

    def plan_cuda_backward(self, n, g, k):
        s = k.reduction_splits(g["C"], g["M"])
        part = "((double *)(arena + N2D2_SCRATCH_OFF))"
        specs = [k.kernel("bwd_stats", (g["C"] * s, 1, 1), barrier=True, S=s, CH=k.ceil(g["M"], s), part=part,
                          scratch=16 * g["C"] * s),
                 k.kernel("bwd_finalize", (k.ceil(g["C"], k.THREADS), 1, 1), S=s, part=part)]
        if n.dx[0] is not None:
            specs.append(k.elementwise("bwd_dx", g["SIZE"], C=g["C"], HW=g["HW"]))
        return specs
