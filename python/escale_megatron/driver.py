"""`python -m escale_megatron train --spec SPEC.json`: an escale training run executed by
megatron-core's own machinery, launched by torchrun (one process per rank).

escale (Rust, `escale train --engine megatron`) writes the spec: the model description, the
initial torch_dist checkpoint, the data prefixes and every training setting of escale's
in-process trainer. This driver builds GPTModel for this rank's tensor/pipeline/expert shard,
wraps it in megatron-core's DistributedDataParallel with the distributed optimizer and
OptimizerParamScheduler, reads training batches from GPTDataset over escale's `.bin/.idx`, steps
with `get_forward_backward_func`, and writes (rank 0) the same `train_log.jsonl` / `eval_log.jsonl`
records as escale's trainer, so reports and plots read both engines alike. Checkpoints are
torch_dist (Megatron-LM's `iter_NNNNNNN` layout) holding the model, the optimizer, the scheduler,
the RNG states and escale's run state; `resume` continues the same trajectory.

Conventions matched to escale's trainer (crates/train):
* the learning rate of update s (1-based) is escale's `LrSchedule::lr(s)`: the scheduler is
  advanced to s before update s (Megatron-LM advances after, so its first update uses lr(0));
* the global batch is micro_batch x grad_accum sequences (escale's step), split over the
  data-parallel ranks; the logged loss is its mean next-token loss before the MoE terms;
* validation scores the first `eval_tokens` targets of the validation set in stream order
  (contiguous windows, read with megatron-core's IndexedDataset), the same tokens every time,
  as escale's `evaluate` does, so the two engines' validation losses are the same quantity;
* `aux_loss` / `z_loss` are the unscaled per-layer values megatron-core's router records, the
  mean over MoE layers (escale's Megatron convention); `expert_load` the share of routed slots.
Each event is also printed on stdout as one JSON line for escale to follow.
"""
import json
import math
import os
import random
import shutil
import time

import numpy
import torch

from .build import BridgeError

TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"
TRACKER = "latest_checkpointed_iteration.txt"
# The distributed optimizer's checkpoint format: each rank writes its own shard in parallel (no
# gather); a resume may change the data-parallel size but not TP / PP / EP. (megatron-core
# 0.16.1 refuses its other parallel format, fully_sharded_model_space, as "flattened_range".)
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}


def _dist():
    return torch.distributed


def _is_rank0():
    return _dist().get_rank() == 0


def emit(event, **fields):
    """One progress line for escale (rank 0 only)."""
    if _is_rank0():
        print(json.dumps({"event": event, **fields}), flush=True)


def read_spec(path):
    from . import PROTOCOL

    with open(path) as f:
        spec = json.load(f)
    if spec.get("escale_megatron_protocol") != PROTOCOL:
        raise BridgeError(f"{path}: protocol {spec.get('escale_megatron_protocol')!r}, this bridge speaks {PROTOCOL}")
    return spec


class _Tokenizer:
    """What GPTDataset asks of a tokenizer. pad is -1: no token of the data is padding, so every
    target is scored as escale's trainer scores it (no loss mask on end-of-document tokens)."""

    def __init__(self, vocab_size, eod):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = -1
        self.unique_identifiers = {"class": "escale", "vocab_size": vocab_size, "eod": eod}


def build_train_dataset(spec, samples):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=spec["seed"],
        sequence_length=spec["seq_len"],
        blend=([spec["data"]], None),
        split="100,0,0",
        tokenizer=_Tokenizer(spec["vocab_size"], spec["eod"]),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=None,
        mid_level_dataset_surplus=0.005,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()
    return train


def validation_windows(spec):
    """The first windows of the validation stream, as escale's `evaluate` takes them: [W, seq + 1]."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    seq = spec["seq_len"]
    data = IndexedDataset(spec["valid"])
    wanted = max(1, -(-spec["eval_tokens"] // seq))
    need = wanted * seq + 1
    parts, have = [], 0
    for i in range(len(data)):
        doc = numpy.asarray(data[i], dtype=numpy.int64)
        parts.append(doc)
        have += len(doc)
        if have >= need:
            break
    stream = numpy.concatenate(parts) if parts else numpy.zeros(0, dtype=numpy.int64)
    windows = min(wanted, (len(stream) - 1) // seq if len(stream) > 0 else 0)
    if windows < 1:
        raise BridgeError(f"{spec['valid']}: fewer than seq_len + 1 = {seq + 1} validation tokens")
    return torch.from_numpy(numpy.stack([stream[w * seq : w * seq + seq + 1] for w in range(windows)]))


class Run:
    """One rank's share of the run: model, optimizer, scheduler, data, run state."""

    def __init__(self, spec):
        from megatron.core import parallel_state as ps

        from . import cpu_shims
        from .build import check_version, init_distributed, read_description

        self.spec = spec
        self.version = check_version()
        self.desc = read_description(spec["model"])
        tp, pp, ep = spec["tp"], spec["pp"], spec["ep"]
        init_distributed(tp, pp, ep)
        cpu_shims.apply(training=True)
        world = _dist().get_world_size()
        if world != tp * pp * spec["dp"]:
            raise BridgeError(
                f"the launcher started {world} processes, but tp {tp} x pp {pp} x dp {spec['dp']} = {tp * pp * spec['dp']}"
            )
        self.ps = ps
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.dp = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.global_batch = spec["micro_batch"] * spec["grad_accum"]
        self.micro = spec["micro_batch"]
        self.num_micro = self.global_batch // (self.micro * self.dp)
        self._seed(spec["seed"])
        self.model = self._build_model()
        self.moe_layers = [i for i, m in enumerate(self._moe_pattern()) if m]
        self.expert_counts = None
        self._hook_routers()

    def _seed(self, seed):
        random.seed(seed)
        numpy.random.seed(seed)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(seed)

    def _moe_pattern(self):
        tc = self.desc["transformer_config"]
        if not tc.get("num_moe_experts"):
            return []
        return tc.get("moe_layer_freq") or [1] * tc["num_layers"]

    def _build_model(self):
        from .build import DTYPES, build_model

        spec, ps = self.spec, self.ps
        overrides = {
            "tensor_model_parallel_size": spec["tp"],
            "pipeline_model_parallel_size": spec["pp"],
            "expert_model_parallel_size": spec["ep"],
            "sequence_parallel": False,
        }
        if spec["pp"] > 1:
            overrides["pipeline_dtype"] = DTYPES[self.desc["params_dtype"]]
        if self.desc["transformer_config"].get("num_moe_experts"):
            overrides["moe_aux_loss_coeff"] = spec["aux_loss_coef"]
            overrides["moe_z_loss_coeff"] = spec["z_loss_coef"] if spec["z_loss_coef"] > 0 else None
            # allgather is the dispatcher that runs on CPU; alltoall is the fast one on GPUs.
            if torch.cuda.is_available() and spec["ep"] > 1:
                overrides["moe_token_dispatcher_type"] = "alltoall"
        model = build_model(
            self.desc, overrides, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage()
        )
        return model.to(self.device)

    def _hook_routers(self):
        """Counts the tokens each expert receives (escale's `expert_load`), from the routing map
        every megatron-core router returns."""
        from megatron.core.transformer.moe.router import TopKRouter

        if not self.moe_layers:
            return
        experts = self.desc["transformer_config"]["num_moe_experts"]
        self.expert_counts = torch.zeros(self.desc["transformer_config"]["num_layers"], experts, dtype=torch.float64)

        def hook(module, _inputs, output):
            if module.training and torch.is_grad_enabled():
                routing_map = output[1]
                self.expert_counts[module.layer_number - 1] += routing_map.detach().reshape(-1, experts).sum(0).double().cpu()

        for module in self.model.modules():
            if isinstance(module, TopKRouter):
                module.register_forward_hook(hook)

    def wrap(self):
        """DistributedDataParallel, distributed optimizer and OptimizerParamScheduler."""
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        spec = self.spec
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=True
        )
        self.ddp = DistributedDataParallel(config=self.model.config, ddp_config=ddp_config, module=self.model)
        # The schedule reduces the gradients over the data-parallel ranks (and ties embedding
        # gradients across pipeline stages) through this hook; without it every rank would step
        # on its own gradients. no_sync defers the reduction to the last micro-batch.
        self.model.config.finalize_model_grads_func = finalize_model_grads
        self.model.config.no_sync_func = self.ddp.no_sync
        dtype = self.model.config.params_dtype
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=spec["lr"],
                min_lr=spec["min_lr"],
                weight_decay=spec["weight_decay"],
                adam_beta1=spec["beta1"],
                adam_beta2=spec["beta2"],
                adam_eps=spec["eps"],
                # escale logs the gradient norm even when it does not clip (clip 0): megatron
                # computes the norm only when clipping, so "no clipping" is a bound never reached.
                clip_grad=spec["clip"] if spec["clip"] > 0 else 1e30,
                use_distributed_optimizer=True,
                params_dtype=dtype,
                bf16=dtype == torch.bfloat16,
                fp16=dtype == torch.float16,
            ),
            [self.ddp],
        )
        total, warmup = spec["steps"], spec["warmup_steps"]
        style = SCHEDULES[spec["schedule"]]
        # megatron asserts warmup < decay steps; escale's schedule is still warming up at the end
        # of such a run, which a longer decay span reproduces.
        decay_steps = max(total, warmup + 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=spec["lr"],
            min_lr=spec["min_lr"] if style != "constant" else spec["lr"],
            lr_warmup_steps=warmup,
            lr_decay_steps=decay_steps,
            lr_decay_style=style,
            start_wd=spec["weight_decay"],
            end_wd=spec["weight_decay"],
            wd_incr_steps=decay_steps,
            wd_incr_style="constant",
            wsd_decay_steps=spec.get("wsd_decay_steps") if style == "WSD" else None,
            lr_wsd_decay_style="linear" if style == "WSD" else None,
        )

    # ---- checkpoints -------------------------------------------------------------------------

    def _rng_object(self, value):
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        ps = self.ps
        return ShardedObject(
            "rng_state",
            value,
            (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
            (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
            replica_id=self.dp_rank,
        )

    def _rng_state(self):
        state = {
            "random": random.getstate(),
            "numpy": numpy.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            from megatron.core.tensor_parallel import get_cuda_rng_tracker

            state["cuda"] = torch.cuda.get_rng_state()
            state["tracker"] = get_cuda_rng_tracker().get_states()
        return [state]

    def _set_rng_state(self, states):
        state = states[0] if isinstance(states, list) else states
        random.setstate(state["random"])
        numpy.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and "cuda" in state:
            from megatron.core.tensor_parallel import get_cuda_rng_tracker

            torch.cuda.set_rng_state(state["cuda"])
            get_cuda_rng_tracker().set_states(state["tracker"])

    def _layout(self):
        s = self.spec
        return {"tp": s["tp"], "pp": s["pp"], "ep": s["ep"], "dp": s["dp"]}

    def save(self, step, run_state):
        """Writes `iter_<step>` under the save folder: into a partial folder first, renamed once
        every rank has written, then the tracker file (Megatron-LM's), then old ones rotated."""
        from megatron.core import dist_checkpointing

        save_dir = self.spec["save"]
        final = os.path.join(save_dir, f"iter_{step:07d}")
        partial = final + ".partial"
        if _is_rank0():
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
        _dist().barrier()
        # The common part of the checkpoint must be equal on every rank: rank 0's clock decides.
        shared = [run_state]
        _dist().broadcast_object_list(shared, src=0)
        run_state = shared[0]
        model_sd = self.model.sharded_state_dict()
        state = {
            "model": model_sd,
            "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=OPTIMIZER_FORMAT),
            "opt_param_scheduler": self.scheduler.state_dict(),
            "rng_state": self._rng_object(self._rng_state()),
            "iteration": step,
            "checkpoint_version": 3.0,
            "escale": {**run_state, "layout": self._layout()},
        }
        dist_checkpointing.save(state, partial)
        _dist().barrier()
        if _is_rank0():
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            _write_atomic(os.path.join(save_dir, TRACKER), f"{step}\n")
            self._rotate(save_dir)
        _dist().barrier()
        return final

    def _rotate(self, save_dir):
        keep = max(1, self.spec["keep_checkpoints"])
        iters = sorted(d for d in os.listdir(save_dir) if d.startswith("iter_") and not d.endswith(".partial"))
        for old in iters[:-keep]:
            shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)

    def load_initial(self):
        """The starting weights: the torch_dist checkpoint escale exported, resharded by
        megatron-core onto this rank's TP/PP/EP shard."""
        from megatron.core import dist_checkpointing

        loaded = dist_checkpointing.load({"model": self.model.sharded_state_dict()}, self.spec["load"])
        self.model.load_state_dict(loaded["model"], strict=False)

    def _init_optimizer_state(self):
        """Creates the Adam moments (and step counters) that loading fills: the distributed
        optimizer's state dict (0.16.1, plain torch Adam) reads `step` from every parameter's
        state, which exists only after a first update."""
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            opt.init_state_fn(opt.optimizer, opt.config)
            for state in opt.optimizer.state.values():
                state.setdefault("step", torch.tensor(0.0))

    def load_resume(self):
        """Model, optimizer, scheduler and run state of the newest checkpoint; the RNG states too
        when the parallel layout is the one they were saved with."""
        from megatron.core import dist_checkpointing

        save_dir = self.spec["save"]
        with open(os.path.join(save_dir, TRACKER)) as f:
            step = int(f.read().strip())
        path = os.path.join(save_dir, f"iter_{step:07d}")
        common = dist_checkpointing.load_common_state_dict(path)
        escale_state = common["escale"]
        if escale_state.get("run_fingerprint") != self.spec["run_fingerprint"]:
            raise BridgeError(
                f"{path} was written with different training settings (data, batch, lr, schedule, seed, ...); "
                "resuming would not continue the same run"
            )
        self._init_optimizer_state()
        model_sd = self.model.sharded_state_dict()
        request = {"model": model_sd, "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=OPTIMIZER_FORMAT)}
        same_layout = escale_state.get("layout") == self._layout()
        if same_layout:
            request["rng_state"] = self._rng_object(self._rng_state())
        loaded = dist_checkpointing.load(request, path)
        self.model.load_state_dict(loaded["model"], strict=False)
        # The fp32 main parameters are views of the model's (leaf) parameters: copy without autograd.
        with torch.no_grad():
            self.optimizer.load_state_dict(loaded["optimizer"])
        # 0.16.1 with plain torch Adam does not restore Adam's update counter (it keeps the one
        # `_init_optimizer_state` made, shared by all parameters): every parameter has had `step`
        # updates, each needs its own counter for torch's Adam to increment.
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            for state in opt.optimizer.state.values():
                state["step"] = torch.tensor(float(step))
        self.scheduler.load_state_dict(common["opt_param_scheduler"])
        if same_layout:
            self._set_rng_state(loaded["rng_state"])
        return step, path, escale_state

    # ---- steps -------------------------------------------------------------------------------

    def _forward_step(self, loss_fn):
        from .build import causal_mask

        mask = causal_mask(self.spec["seq_len"]).to(self.device)

        def forward_step(data_iterator, model_chunk):
            batch = next(data_iterator)
            tokens = batch["tokens"].to(self.device)
            labels = batch["labels"].to(self.device)
            loss_mask = batch["loss_mask"].to(self.device)
            positions = torch.arange(tokens.shape[1], device=self.device)[None].expand_as(tokens)
            output = model_chunk(input_ids=tokens, position_ids=positions, attention_mask=mask, labels=labels)
            return output, lambda out: loss_fn(loss_mask, out)

        return forward_step

    def _microbatches(self, dataset, step):
        """This data-parallel rank's micro-batches of update `step` (0-based): the global batch is
        samples [step * G, (step + 1) * G) of the GPTDataset, each micro-batch of the DP ranks
        taking consecutive samples in rank order (Megatron-LM's pretraining sampler)."""
        base = step * self.global_batch
        out = []
        for m in range(self.num_micro):
            start = base + m * self.micro * self.dp + self.dp_rank * self.micro
            items = [dataset[i] for i in range(start, start + self.micro)]
            out.append({k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("tokens", "labels")})
            out[-1]["loss_mask"] = torch.ones(self.micro, self.spec["seq_len"], dtype=torch.float32)
        return out

    def _reduce_from_last_stage(self, values):
        """Sums `values` over the data-parallel ranks of the last pipeline stage (TP rank 0 only,
        the others hold copies) and gives the sums to every rank."""
        ps = self.ps
        t = torch.tensor(values, dtype=torch.float64)
        if not (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0):
            t.zero_()
        t = t.to(self.device)
        _dist().all_reduce(t)
        return t.cpu().tolist()

    def train_step(self, dataset, step):
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

        def loss_fn(loss_mask, output):
            losses = output.float()
            loss = torch.sum(losses.view(-1) * loss_mask.view(-1)) / loss_mask.sum()
            # The schedule divides the returned loss in place by the number of micro-batches.
            return loss, {"lm loss": loss.detach().clone()}

        self.ddp.train()
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        clear_aux_losses_tracker()
        if self.expert_counts is not None:
            self.expert_counts.zero_()
        # The lr of update `step + 1`, as escale's schedule gives it.
        self.scheduler.step(increment=1)
        lr = self.optimizer.param_groups[0]["lr"]
        batches = self._microbatches(dataset, step)
        reduced = get_forward_backward_func()(
            forward_step_func=self._forward_step(loss_fn),
            data_iterator=iter(batches),
            model=[self.ddp],
            num_microbatches=self.num_micro,
            seq_length=self.spec["seq_len"],
            micro_batch_size=self.micro,
            forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        local = sum(float(r["lm loss"]) for r in reduced) if reduced else 0.0
        (loss_sum,) = self._reduce_from_last_stage([local])
        loss = loss_sum / (self.num_micro * self.dp)
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "update_ok": bool(ok), **self._moe_metrics()}

    def _moe_metrics(self):
        """aux_loss / z_loss (mean over MoE layers of the per-layer values, per micro-batch and
        rank) and expert_load (shares of routed slots per MoE layer), reduced over all ranks."""
        from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

        if not self.moe_layers:
            return {"aux_loss": None, "z_loss": None, "expert_load": None}
        tracker = get_moe_layer_wise_logging_tracker()
        num_layers = self.desc["transformer_config"]["num_layers"]
        values = []
        for name in ("load_balancing_loss", "z_loss"):
            entry = tracker.get(name)
            values.append(entry["values"].double().cpu() if entry is not None else torch.zeros(num_layers, dtype=torch.float64))
        packed = torch.cat(values + [self.expert_counts.reshape(-1)]).to(self.device)
        _dist().all_reduce(packed)
        packed = packed.cpu()
        # Every TP rank records the same values; every DP rank and micro-batch its own tokens'.
        copies = self.ps.get_tensor_model_parallel_world_size() * self.dp * self.num_micro
        aux = packed[:num_layers] / copies
        z = packed[num_layers : 2 * num_layers] / copies
        counts = packed[2 * num_layers :].reshape(num_layers, -1)
        layers = self.moe_layers
        load = [(counts[l] / counts[l].sum().clamp(min=1)).tolist() for l in layers]
        mean = lambda t: float(sum(t[l] for l in layers) / len(layers))
        return {"aux_loss": mean(aux), "z_loss": mean(z), "expert_load": load}

    def evaluate(self, windows):
        """Mean next-token loss over `windows` ([W, seq + 1]): each DP rank scores its share, rows
        past the end are padding with a zero loss mask."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        seq, micro, dp = self.spec["seq_len"], self.micro, self.dp
        count = windows.shape[0]
        rounds = -(-count // (micro * dp))
        batches = []
        for m in range(rounds):
            rows, mask = [], []
            for j in range(micro):
                w = m * micro * dp + self.dp_rank * micro + j
                rows.append(windows[w] if w < count else windows[0])
                mask.append(1.0 if w < count else 0.0)
            rows = torch.stack(rows)
            batches.append({"tokens": rows[:, :seq].contiguous(), "labels": rows[:, 1:].contiguous(),
                            "loss_mask": torch.tensor(mask, dtype=torch.float32)[:, None].expand(micro, seq).contiguous()})

        def loss_fn(loss_mask, output):
            total = torch.sum(output.float().view(-1) * loss_mask.view(-1))
            tokens = loss_mask.sum()
            return total / tokens.clamp(min=1), {"sum": total.detach().clone(), "count": tokens.detach().clone()}

        self.ddp.eval()
        with torch.no_grad():
            reduced = get_forward_backward_func()(
                forward_step_func=self._forward_step(loss_fn),
                data_iterator=iter(batches),
                model=[self.ddp],
                num_microbatches=rounds,
                seq_length=seq,
                micro_batch_size=micro,
                forward_only=True,
            )
        self.ddp.train()
        local_sum = sum(float(r["sum"]) for r in reduced) if reduced else 0.0
        local_count = sum(float(r["count"]) for r in reduced) if reduced else 0.0
        total, tokens = self._reduce_from_last_stage([local_sum, local_count])
        return total / tokens


def _write_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_log(path, keep_through):
    """Opens a JSONL log for appending after dropping lines past `keep_through` (written after the
    checkpoint a resumed run continues from), so a resumed log reads as one run."""
    kept = []
    if keep_through > 0 and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= keep_through:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass
    _write_atomic(path, "".join(kept))
    return open(path, "a")


def _log(file, record):
    file.write(json.dumps(record) + "\n")
    file.flush()


def run_training(spec):
    run = Run(spec)
    run.wrap()
    total = spec["steps"]
    resumed_from, state = None, None
    if spec["resume"]:
        start, resumed_from, state = run.load_resume()
    else:
        run.load_initial()
        start = 0
    state = state or {"tokens": 0, "flops": 0.0, "best_val_loss": None, "last_val_loss": None, "elapsed_s": 0.0,
                      "nonfinite_in_row": 0, "consumed_samples": 0, "run_fingerprint": spec["run_fingerprint"]}
    state.pop("layout", None)
    dataset = build_train_dataset(spec, total * run.global_batch)
    windows = validation_windows(spec) if spec.get("valid") else None
    tokens_per_step = spec["seq_len"] * run.global_batch
    train_log = eval_log = None
    if _is_rank0():
        os.makedirs(spec["output"], exist_ok=True)
        train_log = _open_log(os.path.join(spec["output"], TRAIN_LOG), start)
        eval_log = _open_log(os.path.join(spec["output"], EVAL_LOG), start)
    emit("started", start_step=start, total_steps=total, resumed_from=resumed_from, megatron_core=run.version,
         world_size=_dist().get_world_size())

    def evaluate(step):
        val = run.evaluate(windows)
        state["last_val_loss"] = val
        state["best_val_loss"] = val if state["best_val_loss"] is None else min(state["best_val_loss"], val)
        record = {"step": step, "tokens": state["tokens"], "flops": state["flops"], "val_loss": val}
        if train_log is not None:
            _log(eval_log, record)
        emit("eval", record=record)

    session_start = time.time()
    elapsed_before = state["elapsed_s"]
    if windows is not None and start == 0:
        # Where the (grown) model starts from, before the first update.
        evaluate(0)
        state["best_val_loss"] = state["last_val_loss"]
        state["last_val_loss"] = None
    step, last_checkpoint, final_train_loss, skipped = start, resumed_from, None, 0
    while step < total:
        t0 = time.time()
        out = run.train_step(dataset, step)
        step += 1
        bad = not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"]) and out["update_ok"])
        state["nonfinite_in_row"] = state["nonfinite_in_row"] + 1 if bad else 0
        skipped += int(bad)
        if not bad:
            final_train_loss = out["loss"]
        state["tokens"] += tokens_per_step
        state["flops"] += spec["flops_per_token"] * tokens_per_step
        state["consumed_samples"] = step * run.global_batch
        record = {
            "step": step,
            "tokens": state["tokens"],
            "loss": out["loss"],
            "lr": out["lr"],
            "grad_norm": out["grad_norm"],
            "tokens_per_s": tokens_per_step / max(time.time() - t0, 1e-9),
            "flops": state["flops"],
            "aux_loss": out["aux_loss"],
            "z_loss": out["z_loss"],
            "expert_load": out["expert_load"],
            "skipped": bad,
        }
        if train_log is not None:
            _log(train_log, record)
        emit("step", record=record)
        if state["nonfinite_in_row"] >= spec["max_nonfinite_steps"]:
            raise BridgeError(f"step {step}: {state['nonfinite_in_row']} steps in a row with non-finite loss or gradients "
                              f"(loss {out['loss']}, gradient norm {out['grad_norm']})")
        last = step == total
        if windows is not None and (last or (spec["eval_interval"] > 0 and step % spec["eval_interval"] == 0)):
            evaluate(step)
        if last or (spec["save_interval"] > 0 and step % spec["save_interval"] == 0):
            state["elapsed_s"] = elapsed_before + time.time() - session_start
            last_checkpoint = run.save(step, state)
            emit("checkpoint", step=step, path=last_checkpoint)
        if spec.get("stop_after_step") == step and not last:
            break
    emit(
        "done",
        steps=step,
        tokens=state["tokens"],
        flops=state["flops"],
        final_train_loss=final_train_loss,
        final_val_loss=state["last_val_loss"],
        best_val_loss=state["best_val_loss"],
        wall_s=elapsed_before + time.time() - session_start,
        checkpoint=last_checkpoint,
        stopped_early=step < total,
        skipped_steps=skipped,
    )
    for f in (train_log, eval_log):
        if f is not None:
            f.close()


def cmd_train(a):
    spec = read_spec(a.spec)
    run_training(spec)
    return None


def add_parser(sub):
    t = sub.add_parser("train", help="an escale training run on megatron-core (under torchrun)")
    t.add_argument("--spec", required=True, help="the run's JSON spec, written by `escale train --engine megatron`")
    t.set_defaults(fn=cmd_train)
