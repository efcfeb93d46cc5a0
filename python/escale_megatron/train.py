"""Training steps through megatron-core's own machinery: its DistributedDataParallel, its
(distributed) optimizer, and `get_forward_backward_func`. The batch comes from escale (token ids),
so the step can be compared with escale's in-process trainer on the same weights and tokens.
"""
import json

import torch


def _loss_func(loss_mask, output_tensor):
    losses = output_tensor.float()
    loss = torch.sum(losses.view(-1) * loss_mask.view(-1)) / loss_mask.sum()
    # The schedule divides the returned loss in place by the number of microbatches: log a copy.
    return loss, {"lm loss": loss.detach().clone()}


def train_steps(desc, checkpoint, ids, steps, opt):
    """Runs `steps` optimizer steps on the one batch `ids` ([batch, seq + 1]); returns per step the
    language-model loss before the update, the MoE losses and the gradient norm."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    from . import cpu_shims
    from .__main__ import _load_checkpoint
    from .build import causal_mask

    cpu_shims.apply(training=True)
    model = _load_checkpoint(desc, checkpoint)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=opt["distributed_optimizer"]
    )
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=opt["lr"],
            weight_decay=opt["weight_decay"],
            adam_beta1=opt["beta1"],
            adam_beta2=opt["beta2"],
            adam_eps=opt["eps"],
            clip_grad=opt["clip_grad"],
            use_distributed_optimizer=opt["distributed_optimizer"],
            params_dtype=model.config.params_dtype,
        ),
        [ddp],
    )
    # The scheduler sets each parameter group's lr and weight decay (times its wd_mult: 0 for
    # norms and biases); without it every group keeps the optimizer's weight decay.
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=opt["lr"],
        max_lr=opt["lr"],
        min_lr=opt["lr"],
        lr_warmup_steps=0,
        lr_decay_steps=max(steps, 1),
        lr_decay_style="constant",
        start_wd=opt["weight_decay"],
        end_wd=opt["weight_decay"],
        wd_incr_steps=max(steps, 1),
        wd_incr_style="constant",
    )
    batch, total = ids.shape
    seq = total - 1
    tokens, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    positions = torch.arange(seq, dtype=torch.long)[None].expand(batch, seq)
    mask = causal_mask(seq)
    loss_mask = torch.ones(batch, seq, dtype=torch.float32)

    def forward_step(data_iterator, model_chunk):
        next(data_iterator)
        output = model_chunk(input_ids=tokens, position_ids=positions, attention_mask=mask, labels=labels)
        return output, lambda out: _loss_func(loss_mask, out)

    forward_backward = get_forward_backward_func()
    records = []
    for _ in range(steps):
        ddp.train()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        clear_aux_losses_tracker()
        reduced = forward_backward(
            forward_step_func=forward_step,
            data_iterator=iter([None]),
            model=[ddp],
            num_microbatches=1,
            seq_length=seq,
            micro_batch_size=batch,
            forward_only=False,
        )
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        tracker = get_moe_layer_wise_logging_tracker()
        moe = {name: [float(v) for v in entry["values"]] for name, entry in tracker.items()}
        records.append(
            {"loss": float(reduced[0]["lm loss"]), "grad_norm": float(grad_norm), "update_ok": bool(ok), "moe_losses": moe}
        )
    return records


def cmd_train_steps(a):
    from .build import check_version, init_distributed, read_description

    version = check_version()
    desc = read_description(a.model)
    init_distributed()
    with open(a.ids) as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    opt = {
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "beta1": a.beta1,
        "beta2": a.beta2,
        "eps": a.eps,
        "clip_grad": a.clip_grad,
        "distributed_optimizer": a.distributed_optimizer,
    }
    records = train_steps(desc, a.checkpoint, ids, a.steps, opt)
    return {"steps": records, "megatron_core": version}


def add_parser(sub):
    t = sub.add_parser("train-steps")
    t.add_argument("--model", required=True)
    t.add_argument("--checkpoint", required=True)
    t.add_argument("--ids", required=True, help="JSON [batch, seq + 1] token ids")
    t.add_argument("--steps", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--clip-grad", type=float, default=1.0)
    t.add_argument("--distributed-optimizer", action="store_true")
    t.set_defaults(fn=cmd_train_steps)
