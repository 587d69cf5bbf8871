"""A second device on a CPU-only machine, to catch "a CPU tensor meets a model on the GPU".

On a CUDA machine ``load_model`` puts the model on the GPU while a tokenizer, ``torch.tensor``
and every factory without ``device=`` still build on the CPU; the first op that mixes the two
raises (``index_select``: expected all tensors on the same device). On a CPU-only machine both
are on the CPU and the bug is invisible. ``emulated_device(model)`` makes it visible:

- the model's parameters and buffers, and every tensor computed from them, are *on the device*:
  they still hold real CPU data (so generation, ``.item()`` and training run for real) but
  report ``torch.device("meta")``, a device that is not the CPU;
- ``.to(device)``, ``BatchEncoding.to(device)`` and factories given ``device=`` that device make
  tensors on the device; ``.cpu()`` and ``.to("cpu")`` take them off;
- any op that mixes a tensor on the device with a CPU tensor of one or more dimensions raises
  ``DeviceMismatch``, as CUDA does (0-dim CPU tensors are allowed, as CUDA allows them).

A helper that takes the device from the model (``next(model.parameters()).device``,
``model.device``, ``x.device``) passes; one that builds its inputs on the default device fails,
naming the op. Not a test module itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("meta")  # what tensors on the emulated device report
_TAG = "_course_on_emulated_device"


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a tensor on the model's (emulated) device."""


def on_device(t: object) -> bool:
    """Whether ``t`` is a tensor on the emulated device."""
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _tag(t: torch.Tensor) -> torch.Tensor:
    setattr(t, _TAG, True)
    return t


def _is_fake(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


def _split_to_args(args, kwargs):
    """``Tensor.to``'s target device and its remaining arguments (dtype, copy, ...)."""
    args, kwargs, device = list(args), dict(kwargs), kwargs.get("device")
    kwargs.pop("device", None)
    rest = []
    for a in args:
        if isinstance(a, (torch.device, str)) or (isinstance(a, int) and not isinstance(a, bool)):
            device = a
        elif isinstance(a, torch.Tensor):  # .to(other): other's device and dtype
            device = FAKE if on_device(a) else a.device
            rest.append(a.dtype)
        else:
            rest.append(a)
    return device, rest, kwargs


# Ops CUDA runs across devices: x[i] = row, x.copy_(y), Module.to's type check before it swaps.
_CROSS_DEVICE = (
    torch.Tensor.__setitem__,
    torch.Tensor.copy_,
    torch._has_compatible_shallow_copy_type,
)


class _EmulatedDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.grad.__get__:  # autograd made it beside its parameter
            grad = func(*args)
            return _tag(grad) if grad is not None and on_device(args[0]) else grad
        if func in (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda):
            return self._move(func, args, kwargs)
        if func is torch.Tensor.numpy and on_device(args[0]):
            raise TypeError("can't convert an emulated-device tensor to numpy: call .cpu() first")
        fake_factory = _is_fake(kwargs.get("device"))
        if fake_factory:
            kwargs = {**kwargs, "device": "cpu"}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        here = [t for t in tensors if on_device(t)]
        cpu = [t for t in tensors if not on_device(t) and t.dim() > 0]
        if func == torch.Tensor.data.__set__:  # Module.to swaps a parameter's data in place
            func(*args)
            setattr(args[0], _TAG, on_device(args[1]))
            return None
        if func in _CROSS_DEVICE:
            return func(*args, **kwargs)
        if (here or fake_factory) and cpu:
            raise DeviceMismatch(
                f"{getattr(func, '__name__', func)}: a CPU tensor of shape {tuple(cpu[0].shape)} "
                "met the model's device. Build it on the model's device: "
                "tensor.to(next(model.parameters()).device)."
            )
        out = func(*args, **kwargs)
        if here or fake_factory:
            tree_map(lambda t: _tag(t) if isinstance(t, torch.Tensor) else t, out)
        return out

    def _move(self, func, args, kwargs):
        src = args[0]
        if func is torch.Tensor.cpu:
            device, rest, kwargs = "cpu", [], kwargs
        elif func is torch.Tensor.cuda:
            device, rest, kwargs = FAKE, [], {}
        else:
            device, rest, kwargs = _split_to_args(args[1:], kwargs)
        out = torch.Tensor.to(src, *rest, **kwargs)
        to_fake = on_device(src) if device is None else _is_fake(device)  # None: a dtype change
        if to_fake == on_device(src):
            return _tag(out) if to_fake else out
        if out is src:  # a real move makes a new tensor; the source stays where it was
            out = src.clone()
        if to_fake:
            return _tag(out)
        setattr(out, _TAG, False)
        return out


class EmulatedDevice:
    """The device a model is put on inside ``emulated_device()``."""

    def __init__(self) -> None:
        self._tagged: list[torch.Tensor] = []

    def put(self, module: nn.Module) -> nn.Module:
        """Put ``module``'s parameters, buffers and 4-bit quantization state on the device."""
        for t in (*module.parameters(), *module.buffers()):
            self._tagged.append(_tag(t))
            state = getattr(t, "quant_state", None)  # bitsandbytes keeps absmax beside the weight
            while state is not None:
                for name in ("absmax", "code", "offset"):
                    value = getattr(state, name, None)
                    if isinstance(value, torch.Tensor):
                        self._tagged.append(_tag(value))
                state = getattr(state, "state2", None)
        return module


@contextlib.contextmanager
def emulated_device(*modules: nn.Module) -> Iterator[EmulatedDevice]:
    """Emulate a second device for the duration of the block.

    Args:
        modules: models put on the device at once (``device.put(model)`` adds more later).
    Yields:
        The device, whose ``put`` moves a module there.
    Raises:
        DeviceMismatch: inside the block, when an op mixes a CPU tensor with one on the device.
    """
    device = EmulatedDevice()
    for module in modules:
        device.put(module)
    if "device" in vars(torch.Tensor):
        raise RuntimeError("emulated_device() blocks cannot nest, and torch.Tensor.device is set")
    real = torch._C.TensorBase.device  # the C getter; torch.Tensor only inherits it
    torch.Tensor.device = property(lambda t: FAKE if on_device(t) else real.__get__(t))
    try:
        with _EmulatedDevice():
            yield device
    finally:
        del torch.Tensor.device
        for t in device._tagged:
            setattr(t, _TAG, False)
