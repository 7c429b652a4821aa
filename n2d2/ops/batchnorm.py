"""Spatial batch normalisation over NCHW (statistics per channel over N, H, W).

Learn mode normalises with the batch statistics (biased variance, as N2D2's BatchNormCell_Frame)
and folds them into the moving averages; test mode normalises with the moving averages.
"""
from n2d2.backend import array_module


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
