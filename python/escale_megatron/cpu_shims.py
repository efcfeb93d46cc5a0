"""Process-wide patches that let megatron-core run on a machine without CUDA.

megatron-core assumes a GPU in a few places even when every tensor is on the CPU (measured on
0.16.1 and 0.19.2, see docs/megatron-notes in the escale repository). Each patch below names the
call it replaces. `apply()` does nothing when a CUDA device exists: on GPUs none is needed.
"""
import contextlib

import torch

_APPLIED = False


def _cpu_device(*_args, **_kwargs):
    return torch.device("cpu")


def _to_cpu(device):
    if device is None:
        return None
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return torch.device("cpu") if dev.type == "cuda" else dev


def _cpu_factory(fn):
    # torch.tensor/zeros/ones/... called with device="cuda" (optimizer, grad clipping, schedules).
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        return fn(*args, **kwargs)

    return wrapped


class _NullStream:
    def wait_stream(self, *_a, **_k):
        pass

    def synchronize(self):
        pass

    def record_event(self, *_a, **_k):
        return None


def apply(training=False):
    """Installs the patches once per process when no CUDA device is present; `training` adds those
    the optimizer, gradient clipping and the DDP gradient sync need."""
    global _APPLIED
    if torch.cuda.is_available():
        return
    if not _APPLIED:
        _apply_model_shims()
        _APPLIED = True
    if training and not getattr(torch.Tensor.type, "_escale_shim", False):
        _apply_training_shims()


def _apply_training_shims():
    # The DDP gradient sync records the current stream even without overlap.
    torch.cuda.current_stream = lambda *a, **k: _NullStream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    for name in ("tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like"):
        setattr(torch, name, _cpu_factory(getattr(torch, name)))
    torch.Tensor.cuda = lambda self, *a, **k: self
    # Gradient clipping and the distributed optimizer assert `tensor.type() == 'torch.cuda.FloatTensor'`.
    original_type = torch.Tensor.type

    def type_as_on_gpu(self, *args, **kwargs):
        if args or kwargs:
            return original_type(self, *args, **kwargs)
        return original_type(self).replace("torch.", "torch.cuda.", 1)

    type_as_on_gpu._escale_shim = True
    torch.Tensor.type = type_as_on_gpu


def _apply_model_shims():
    # RoPE, the router and the experts ask for the current device.
    torch.cuda.current_device = _cpu_device
    # Distributed checkpointing and the pipeline p2p synchronise the device.
    torch.cuda.synchronize = lambda *a, **k: None
    from megatron.core import tensor_parallel

    # Attention dropout always forks the CUDA RNG tracker (dropout is 0 here: nothing to fork).
    tracker = tensor_parallel.random.get_cuda_rng_tracker()
    tracker.fork = lambda *a, **k: contextlib.nullcontext()
    # 0.16.1: the router's gating refers to TransformerEngine's `te_general_gemm`, which is never
    # defined when TransformerEngine is absent (NameError); None selects the plain matmul.
    from megatron.core.transformer.moe import moe_utils

    moe_utils.te_general_gemm = None
