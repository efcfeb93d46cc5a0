"""Command line of escale's Megatron-Core bridge. escale runs it; each command prints one JSON line.

    python -m escale_megatron check
    python -m escale_megatron save-checkpoint --model M.json --state S.safetensors --out ITER_DIR
    python -m escale_megatron dump-checkpoint --model M.json --checkpoint ITER_DIR --out S.safetensors
    python -m escale_megatron forward --model M.json --checkpoint ITER_DIR --ids IDS.json --out LOGITS.safetensors
    python -m escale_megatron dataset --prefix DATA_PREFIX --seq-len S --samples N --seed N --out OUT.json
    python -m escale_megatron train-steps --model M.json --checkpoint ITER_DIR --ids IDS.json --steps N [optimizer flags]
    torchrun ... -m escale_megatron train --spec SPEC.json   (escale train --engine megatron; see driver.py)

M.json is the model description escale writes (TransformerConfig and GPTModel arguments);
S.safetensors holds tensors under megatron-core's local-spec names (`decoder.layers.0.self_attention.linear_qkv.weight`).
"""
import argparse
import json
import os
import sys

from .build import BridgeError


def _model_state(model):
    # `_extra_state` entries are module metadata (None for local modules), not weights.
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def cmd_check(_a):
    import platform

    import torch

    from .build import check_version

    return {"megatron_core": check_version(), "torch": torch.__version__, "python": platform.python_version()}


def _load_state_strict(model, path):
    """Copies the tensors of the safetensors file `path` into the model's parameters one at a time
    (peak memory: the model plus one tensor), after checking names, shapes and dtypes."""
    import torch
    from safetensors import safe_open

    expected = _model_state(model)
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        missing = sorted(set(expected) - names)
        unexpected = sorted(names - set(expected))
        if missing or unexpected:
            raise BridgeError(f"{path}: tensors do not match the GPTModel built from the description: "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        with torch.no_grad():
            for name in sorted(names):
                tensor = f.get_tensor(name)
                target = expected[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise BridgeError(f"{path}: `{name}` has shape {list(tensor.shape)}, GPTModel expects {list(target.shape)}")
                if tensor.dtype != target.dtype:
                    raise BridgeError(f"{path}: `{name}` is {tensor.dtype}, GPTModel holds {target.dtype}")
                target.copy_(tensor)


def cmd_save_checkpoint(a):
    from megatron.core import dist_checkpointing

    from .build import build_model, check_version, init_distributed, read_description

    version = check_version()
    desc = read_description(a.model)
    init_distributed()
    model = build_model(desc)
    _load_state_strict(model, a.state)
    # The layout Megatron-LM's `--load` reads: model under "model", plus the version keys it checks.
    state = {"model": model.sharded_state_dict(), "checkpoint_version": 3.0, "iteration": 0}
    os.makedirs(a.out, exist_ok=True)
    dist_checkpointing.save(state, a.out)
    return {"checkpoint": a.out, "megatron_core": version, "tensors": len(_model_state(model))}


def _load_checkpoint(desc, checkpoint):
    from megatron.core import dist_checkpointing

    from .build import build_model

    model = build_model(desc)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, checkpoint)
    model.load_state_dict(loaded["model"], strict=False)
    return model


def cmd_dump_checkpoint(a):
    from safetensors.torch import save_file

    from .build import check_version, init_distributed, read_description

    version = check_version()
    desc = read_description(a.model)
    init_distributed()
    model = _load_checkpoint(desc, a.checkpoint)
    state = {k: v.detach().contiguous() for k, v in _model_state(model).items()}
    save_file(state, a.out)
    return {"tensors": len(state), "megatron_core": version}


def cmd_forward(a):
    import torch
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker
    from safetensors.torch import save_file

    from .build import causal_mask, check_version, init_distributed, read_description

    version = check_version()
    desc = read_description(a.model)
    init_distributed()
    model = _load_checkpoint(desc, a.checkpoint)
    with open(a.ids) as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    batch, seq = ids.shape
    # Training mode so the router records its auxiliary and z losses (dropout is 0: same logits).
    model.train()
    clear_aux_losses_tracker()
    positions = torch.arange(seq, dtype=torch.long)[None].expand(batch, seq)
    with torch.enable_grad():
        logits = model(input_ids=ids, position_ids=positions, attention_mask=causal_mask(seq))
    save_file({"logits": logits.detach().float().contiguous()}, a.out)
    tracker = get_moe_layer_wise_logging_tracker()
    losses = {name: [float(v) for v in entry["values"]] for name, entry in tracker.items()}
    return {"shape": list(logits.shape), "moe_losses": losses, "megatron_core": version}


class _Tokenizer:
    """What GPTDataset asks of a tokenizer: sizes and the end-of-document / padding ids."""

    def __init__(self, vocab_size, eod):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = eod
        self.unique_identifiers = {"class": "escale", "vocab_size": vocab_size, "eod": eod}


def cmd_dataset(a):
    import numpy
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from .build import check_version

    version = check_version()
    indexed = IndexedDataset(a.prefix)
    documents = [indexed[i].tolist() for i in range(len(indexed))]
    config = GPTDatasetConfig(
        random_seed=a.seed,
        sequence_length=a.seq_len,
        blend=([a.prefix], None),
        split="100,0,0",
        tokenizer=_Tokenizer(a.vocab_size, a.eod),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=a.cache,
        mid_level_dataset_surplus=0.005,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [a.samples, 0, 0], lambda: True, config).build()
    samples = []
    for i in range(a.samples):
        item = train[i]
        tokens = numpy.asarray(item["tokens"]).tolist()
        labels = numpy.asarray(item["labels"]).tolist()
        samples.append({"tokens": tokens, "labels": labels})
    result = {"documents": documents, "dtype": numpy.dtype(indexed.index.dtype).name, "samples": samples, "megatron_core": version}
    with open(a.out, "w") as f:
        json.dump(result, f)
    return {"documents": len(documents), "samples": len(samples), "megatron_core": version}


def parser():
    p = argparse.ArgumentParser(prog="python -m escale_megatron", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check").set_defaults(fn=cmd_check)
    s = sub.add_parser("save-checkpoint")
    s.add_argument("--model", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_save_checkpoint)
    d = sub.add_parser("dump-checkpoint")
    d.add_argument("--model", required=True)
    d.add_argument("--checkpoint", required=True)
    d.add_argument("--out", required=True)
    d.set_defaults(fn=cmd_dump_checkpoint)
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True)
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--ids", required=True)
    f.add_argument("--out", required=True)
    f.set_defaults(fn=cmd_forward)
    ds = sub.add_parser("dataset")
    ds.add_argument("--prefix", required=True)
    ds.add_argument("--seq-len", type=int, required=True)
    ds.add_argument("--samples", type=int, required=True)
    ds.add_argument("--seed", type=int, default=1234)
    ds.add_argument("--vocab-size", type=int, required=True)
    ds.add_argument("--eod", type=int, required=True)
    ds.add_argument("--cache", default=None)
    ds.add_argument("--out", required=True)
    ds.set_defaults(fn=cmd_dataset)
    from . import driver, train

    train.add_parser(sub)
    driver.add_parser(sub)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        result = a.fn(a)
    except BridgeError as e:
        print(f"escale_megatron: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # The checkpoint writer starts helper processes that re-import this module: keep the work
    # under this guard.
    code = main()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)
