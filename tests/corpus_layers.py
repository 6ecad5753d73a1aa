"""Hand-written layers as public tutorials and course repositories write them, each as close to its
source as a test allows, in a clean form and a flagged one.

- ``d2l_batch_norm`` / ``D2LBatchNorm``: the BatchNorm from scratch of the d2l.ai chapter "Batch
  Normalization" (PyTorch tab): gamma/beta parameters of shape (1, C, 1, 1), moving statistics as plain
  tensor attributes (not buffers), no num_features/eps/momentum attributes, and the mode chosen by
  ``torch.is_grad_enabled()``.
- ``port_batch_norm`` / ``PortBatchNorm``: its Dive-into-DL-PyTorch port: the mode from ``self.training``,
  momentum 0.9 in Keras' formula, means chained over dims 0, 2, 3, and the moving statistics never
  detached.
- ``CS231nSpatialBatchNorm``: the CS231n assignment's spatial batchnorm (permute to (N*H*W, C) and reuse the
  vanilla batchnorm), statistics under the assignment's own names.
- ``Im2ColConv``: a convolution by ``F.unfold`` and a matrix product.
- ``GeM``: generalized-mean pooling (image retrieval), with a learnable or a fixed exponent.
- ``Conv2dSame``: a TensorFlow-style "same" convolution, ``F.pad`` then ``F.conv2d`` (as in timm).
- ``WSConv2d``: a weight-standardised convolution (BiT / NFNet style).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# -- d2l.ai, chapter "Batch Normalization" ------------------------------------------------------------
def d2l_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # Use is_grad_enabled to determine whether we are in training mode
    if not torch.is_grad_enabled():
        # In prediction mode, use mean and variance obtained by moving average
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            # When using a fully connected layer, calculate the mean and
            # variance on the feature dimension
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # When using a two-dimensional convolutional layer, calculate the
            # mean and variance on the channel dimension (axis=1). Here we
            # need to maintain the shape of X, so that the broadcasting
            # operation can be carried out later
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        # In training mode, the current mean and variance are used
        X_hat = (X - mean) / torch.sqrt(var + eps)
        # Update the mean and variance using moving average
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var
    Y = gamma * X_hat + beta  # Scale and shift
    return Y, moving_mean.data, moving_var.data


class D2LBatchNorm(nn.Module):
    # num_features: the number of outputs for a fully connected layer or the
    # number of output channels for a convolutional layer. num_dims: 2 for a
    # fully connected layer and 4 for a convolutional layer
    def __init__(self, num_features, num_dims):
        super().__init__()
        if num_dims == 2:
            shape = (1, num_features)
        else:
            shape = (1, num_features, 1, 1)
        # The scale parameter and the shift parameter (model parameters) are
        # initialized to 1 and 0, respectively
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        # The variables that are not model parameters are initialized to 0 and 1
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)

    def forward(self, X):
        # If X is not on the main memory, copy moving_mean and moving_var to
        # the device where X is located
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        # Save the updated moving_mean and moving_var
        Y, self.moving_mean, self.moving_var = d2l_batch_norm(
            X, self.gamma, self.beta, self.moving_mean,
            self.moving_var, eps=1e-5, momentum=0.1)
        return Y


def d2l_fixed_batch_norm(is_training, X, gamma, beta, moving_mean, moving_var, eps, momentum):
    """The chapter's function with the two defects fixed: the mode from the module, and the unbiased
    variance for the running estimate."""
    if not is_training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        mean = X.mean(dim=(0, 2, 3), keepdim=True)
        var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        n = X.numel() / X.shape[1]
        moving_mean = (1.0 - momentum) * moving_mean + momentum * mean
        moving_var = (1.0 - momentum) * moving_var + momentum * var * n / (n - 1)
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data


class D2LBatchNormFixed(D2LBatchNorm):
    def forward(self, X):
        Y, self.moving_mean, self.moving_var = d2l_fixed_batch_norm(
            self.training, X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.1)
        return Y


# -- Dive-into-DL-PyTorch (the book's PyTorch port) -------------------------------------------------------
def port_batch_norm(is_training, X, gamma, beta, moving_mean, moving_var, eps, momentum):
    # 判断当前模式是训练模式还是预测模式
    if not is_training:
        # 如果是在预测模式下，直接使用传入的移动平均所得的均值和方差
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            # 使用全连接层的情况，计算特征维上的均值和方差
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            # 使用二维卷积层的情况，计算通道维上（axis=1）的均值和方差。这里我们需要保持
            # X的形状以便后面可以做广播运算
            mean = X.mean(dim=0, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
            var = ((X - mean) ** 2).mean(dim=0, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
        # 训练模式下用当前的均值和方差做标准化
        X_hat = (X - mean) / torch.sqrt(var + eps)
        # 更新移动平均的均值和方差
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta  # 拉伸和偏移
    return Y, moving_mean, moving_var


class PortBatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super(PortBatchNorm, self).__init__()
        if num_dims == 2:
            shape = (1, num_features)
        else:
            shape = (1, num_features, 1, 1)
        # 参与求梯度和迭代的拉伸和偏移参数，分别初始化成0和1
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        # 不参与求梯度和迭代的变量，全在内存上初始化成0
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.zeros(shape)

    def forward(self, X):
        # 如果X不在内存上，将moving_mean和moving_var复制到X所在显存上
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        # 保存更新过的moving_mean和moving_var, Module实例的traning属性默认为true, 调用.eval()后设成false
        Y, self.moving_mean, self.moving_var = port_batch_norm(self.training,
            X, self.gamma, self.beta, self.moving_mean,
            self.moving_var, eps=1e-5, momentum=0.9)
        return Y


# -- CS231n, assignment 2: spatial batch normalization -------------------------------------------------
class CS231nSpatialBatchNorm(nn.Module):
    """``spatial_batchnorm_forward``: reshape to (N*H*W, C), call the vanilla ``batchnorm_forward``.
    The assignment keeps ``running_mean = momentum * running_mean + (1 - momentum) * sample_mean`` with
    momentum=0.9 and its running variance from the same (biased) sample variance; ``unbiased_running``
    switches to the unbiased one, as PyTorch keeps it."""

    def __init__(self, C, eps=1e-5, momentum=0.9, unbiased_running=False):
        super().__init__()
        self.eps, self.momentum, self.unbiased_running = eps, momentum, unbiased_running
        self.gamma = nn.Parameter(torch.ones(C))
        self.beta = nn.Parameter(torch.zeros(C))
        self.register_buffer("mu", torch.zeros(C))
        self.register_buffer("sigma2", torch.zeros(C))

    def batchnorm_forward(self, x):
        if self.training:
            sample_mean = x.mean(dim=0)
            sample_var = x.var(dim=0, unbiased=False)
            x_hat = (x - sample_mean) / torch.sqrt(sample_var + self.eps)
            with torch.no_grad():
                m = x.shape[0]
                running = sample_var * m / (m - 1) if self.unbiased_running else sample_var
                self.mu.mul_(self.momentum).add_((1 - self.momentum) * sample_mean)
                self.sigma2.mul_(self.momentum).add_((1 - self.momentum) * running)
        else:
            x_hat = (x - self.mu) / torch.sqrt(self.sigma2 + self.eps)
        return self.gamma * x_hat + self.beta

    def forward(self, x):
        N, C, H, W = x.shape
        out = self.batchnorm_forward(x.permute(0, 2, 3, 1).reshape(-1, C))
        return out.reshape(N, H, W, C).permute(0, 3, 1, 2)


# -- convolution by unfold + matmul ---------------------------------------------------------------------
class Im2ColConv(nn.Module):
    """``F.unfold`` into columns, one matrix product with the flattened filters. ``flatten_wrong`` reads
    the (C_out, C_in, k, k) filters back in (C_in, C_out) order: it runs, and computes something else."""

    def __init__(self, cin, cout, k, padding=0, flatten_wrong=False):
        super().__init__()
        self.k, self.padding, self.flatten_wrong = k, padding, flatten_wrong
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        n, _, h, w = x.shape
        cols = F.unfold(x, self.k, padding=self.padding)
        weight = self.weight
        if self.flatten_wrong:
            weight = weight.transpose(0, 1).reshape(weight.shape[0], -1)
        out = weight.flatten(1) @ cols + self.bias[:, None]
        side = h + 2 * self.padding - self.k + 1
        return out.view(n, -1, side, w + 2 * self.padding - self.k + 1)


# -- GeM pooling (Radenović et al.) -------------------------------------------------------------------
class GeM(nn.Module):
    def __init__(self, p=3, eps=1e-6, learn_p=True):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p) if learn_p else p
        self.eps = eps

    def forward(self, x):
        return F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (x.size(-2), x.size(-1))).pow(1. / self.p)


# -- TensorFlow "same" padding --------------------------------------------------------------------------
def pad_same(x, k, s, d=(1, 1), value=0):
    ih, iw = x.size()[-2:]
    pad_h = max((math.ceil(ih / s[0]) - 1) * s[0] + (k[0] - 1) * d[0] + 1 - ih, 0)
    pad_w = max((math.ceil(iw / s[1]) - 1) * s[1] + (k[1] - 1) * d[1] + 1 - iw, 0)
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """Tensorflow like 'SAME' convolution wrapper for 2D convolutions (timm's)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x):
        x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


# -- weight standardisation -----------------------------------------------------------------------------
class WSConv2d(nn.Conv2d):
    def forward(self, x):
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5
        return F.conv2d(x, (weight - mean) / std, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledWSConv2d(nn.Conv2d):
    """NFNet's: standardised filters times a learnable gain per output channel (C_out more parameters)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                              momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight * self.gain, self.bias, self.stride, self.padding, self.dilation, self.groups)


# -- the models around them --------------------------------------------------------------------------------
class ConvNormNet(nn.Module):
    """conv -> norm -> ReLU -> global pool -> linear, the shape of every chapter's LeNet/VGG block."""

    def __init__(self, norm: nn.Module, conv: nn.Module | None = None, c: int = 8) -> None:
        super().__init__()
        self.conv = conv if conv is not None else nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = norm
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PoolNet(nn.Module):
    """conv -> ReLU -> pool -> linear: the pooling head of a retrieval or classification model."""

    def __init__(self, pool: nn.Module, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.pool = pool
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


class RoutedCondConv(nn.Module):
    """timm's CondConv2d as its EfficientNet-CondConv blocks call it: per-sample routing weights from a
    pooled linear layer mix the experts' filter banks."""

    def __init__(self, conv: nn.Module, cin: int, experts: int) -> None:
        super().__init__()
        self.routing = nn.Linear(cin, experts)
        self.conv = conv

    def forward(self, x):
        routing = torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return self.conv(x, routing)
