"""NITI: integer-only training (Wang et al., "Neural networks Training and Inference using
Integer-only arithmetic", TPDS 2022) on torch_int8's INT8 kernels.

Every tensor is int8 data times one power-of-two exponent (IntTensor); products run as exact
int32 torch.ops.int8 convolutions / GEMMs and come back to int8 by a right shift found on the
device. See docs/niti.md. Commands: ``python -m torch_int8.niti.train`` and ``python -m
torch_int8.niti.bench``.
"""
from .arith import IntTensor, quantize_input
from .layers import (Conv2d, Dropout, Flatten, GlobalSumPool, IntModule, Linear, MaxPool2d, ReLU, ResidualBlock,
                     Sequential, WeightUpdate)
from .loss import cross_entropy_error
from .models import Network, float_lenet5, float_resnet, float_vgg_small, lenet5, resnet, vgg_small
from .step import GradBitsSchedule, evaluate, float_train_step, train_step

__all__ = ["IntTensor", "quantize_input", "Conv2d", "Dropout", "Flatten", "GlobalSumPool", "IntModule", "Linear",
           "MaxPool2d", "ReLU", "ResidualBlock", "Sequential", "WeightUpdate", "cross_entropy_error", "Network",
           "vgg_small", "lenet5", "resnet", "float_vgg_small", "float_lenet5", "float_resnet", "GradBitsSchedule",
           "evaluate", "float_train_step", "train_step"]
