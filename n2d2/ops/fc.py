"""Fully connected layer: y = x W^T + b over inputs flattened to [N, C*H*W]."""


def fc_forward(x2d, weights, biases=None):
    y = x2d @ weights.T
    if biases is not None:
        y += biases
    return y


def fc_backward(dy, x2d, weights, need_dx=True):
    """Returns (dx2d or None, dW, db) for dy of shape [N, O]."""
    dw = dy.T @ x2d
    db = dy.sum(axis=0)
    dx = dy @ weights if need_dx else None
    return dx, dw, db
