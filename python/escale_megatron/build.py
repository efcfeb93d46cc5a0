"""Builds megatron-core's GPTModel from the model description escale writes (`megatron_model.json`)."""
import atexit
import json
import os
import tempfile

import torch

from . import PROTOCOL, SUPPORTED_MCORE, cpu_shims

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BridgeError(Exception):
    """A problem the user can act on; printed without a traceback."""


def mcore_version():
    from importlib.metadata import version

    return version("megatron-core")


def check_version():
    found = mcore_version()
    if found not in SUPPORTED_MCORE and not os.environ.get("ESCALE_MEGATRON_ANY_VERSION"):
        raise BridgeError(
            f"megatron-core {found} is installed; escale's bridge is checked against {', '.join(SUPPORTED_MCORE)} "
            "(set ESCALE_MEGATRON_ANY_VERSION=1 to try anyway)"
        )
    return found


def read_description(path):
    with open(path) as f:
        desc = json.load(f)
    if desc.get("escale_megatron_protocol") != PROTOCOL:
        raise BridgeError(
            f"{path}: protocol {desc.get('escale_megatron_protocol')!r}, this bridge speaks {PROTOCOL} "
            "(escale and its Python bridge come from different versions)"
        )
    return desc


def init_distributed(tp=1, pp=1, ep=1):
    """torch.distributed on gloo (nccl when CUDA exists) plus megatron's model-parallel groups.

    Under torchrun the environment names the rendezvous; alone, a file store makes a world of one
    without opening a port (tests run several bridges at once)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        else:
            store_file = tempfile.NamedTemporaryFile(prefix="escale-megatron-store-", delete=False).name
            # The store outlives nothing but this process; without this every bridge call left one in /tmp.
            atexit.register(lambda path=store_file: os.path.exists(path) and os.remove(path))
            store = dist.FileStore(store_file, 1)
            dist.init_process_group(backend, store=store, rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep
        )
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if torch.cuda.is_available():
        model_parallel_cuda_manual_seed(1234)
    cpu_shims.apply()


def transformer_config(desc, overrides=None):
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = dict(desc["transformer_config"])
    if kwargs.pop("activation", "silu") != "silu":
        raise BridgeError("only SiLU (SwiGLU) MLPs are described by escale")
    kwargs.update(overrides or {})
    dtype = DTYPES[desc["params_dtype"]]
    return TransformerConfig(
        **kwargs,
        activation_func=torch.nn.functional.silu,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
    )


def layer_spec(config):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec

    if config.num_moe_experts:
        return get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm")
    return get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm")


def build_model(desc, overrides=None, pre_process=True, post_process=True):
    """GPTModel with the local (PyTorch) layer spec, on CPU, in the description's dtype."""
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(desc, overrides)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config),
        pre_process=pre_process,
        post_process=post_process,
        **desc["gpt_model"],
    )
    return model


def causal_mask(seq_len):
    # True = masked. Passing it explicitly avoids megatron building one on `cuda`.
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)[None, None]
