"""The one precision policy of ``selfsup.losses``: every loss runs in float32, whatever autocast says.

Under mixed precision (``torch.autocast`` with bf16/fp16; cookbook, "Speeding Up Training of Vision
Transformers", on bfloat16) the projector's outputs arrive in bf16/fp16, and autocast would also run
the losses' own matmuls in bf16/fp16. A bf16 logit at ``1/T = 10`` is quantised by about +-0.04, which
is enough to move a softmax; Sinkhorn's ``exp(S / epsilon)`` and the covariances of Barlow Twins,
VICReg and W-MSE amplify the rounding further. So each loss is wrapped in :func:`fp32_loss`:
inputs are upcast to float32 *before* any matmul and autocast is off inside the loss. float64 inputs
stay float64 (the reference tests run in float64).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

LossFn = TypeVar("LossFn", bound=Callable[..., Any])

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: Any) -> Any:
    """fp16/bf16 tensors (alone or in a list/tuple) -> fp32; everything else unchanged."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in _LOW_PRECISION else x
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return type(x)(_upcast(v) for v in x) if isinstance(x, list) else tuple(_upcast(v) for v in x)
    return x


def _device_types(values: Iterator[Any]) -> set[str]:
    types: set[str] = set()
    for x in values:
        if isinstance(x, torch.Tensor):
            types.add(x.device.type)
        elif isinstance(x, (list, tuple)):
            types |= _device_types(iter(x))
    return types


def fp32_loss(fn: LossFn) -> LossFn:
    """Run ``fn`` in float32: upcast its fp16/bf16 tensor arguments (also inside lists and tuples)
    to float32 and disable autocast on their devices for the call, so every matmul, softmax,
    covariance and Sinkhorn iteration of the loss runs in float32 (float64 inputs stay float64).
    Gradients flow back to the low-precision inputs through the cast."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_upcast(a) for a in args)
        kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        with contextlib.ExitStack() as stack:
            for device_type in sorted(_device_types(iter([*args, *kwargs.values()]))):
                if torch.amp.is_autocast_available(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
