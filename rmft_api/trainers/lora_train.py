"""The LoRA training process: a small explicit loop that checkpoints and resumes exactly.

One optimizer step covers `batch_size × grad_accum × world_size` examples in a fixed order drawn
from the job's seed. The loss of a step is the mean over the trained (label) tokens of all its
examples, however they are split into micro-batches or ranks, so the result does not depend on
how the batch is cut. A checkpoint holds the trainable tensors, optimizer, scheduler, RNG states,
step, data order and token count; resuming from it continues the same computation, so a run killed
and resumed ends with the same adapter as one never interrupted.

Multi-device: under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) each rank runs this same
process, the model is wrapped in DistributedDataParallel, each rank takes every world_size-th
micro-batch of a step, and rank 0 writes status, checkpoints and the final adapter.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rmft_api.errors import TrainingError
from rmft_api.models.loading import (
    DeviceName,
    quiet_progress,
    resolve_device,
    resolve_dtype,
)
from rmft_api.schema import Message
from rmft_api.store import replace_dir_durably
from rmft_api.trainers.lora_data import IGNORE_INDEX, TokenizedExample, tokenize_rows
from rmft_api.trainers.lora_job import (
    CHECKPOINT_COMPLETE,
    LoraJobSpec,
    StatusReporter,
    list_checkpoints,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (1 when not distributed)."""

    world: int
    rank: int
    local_rank: int

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(
            world=int(os.environ.get("WORLD_SIZE", "1")),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, value: float, device: torch.device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def train(spec: LoraJobSpec, rows: Sequence[Sequence[Message]], reporter: StatusReporter) -> None:
    """Train the job's adapter (resuming from its last checkpoint) and save it to `out_dir`."""
    cfg = spec.config
    ranks = Ranks.from_env()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    device = _device(cfg.device, ranks)
    if ranks.world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    from transformers import AutoTokenizer

    with quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    examples, truncated = tokenize_rows(tokenizer, rows, max_seq_len=cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    per_step = cfg.batch_size * cfg.grad_accum * ranks.world
    steps_per_epoch = math.ceil(len(examples) / per_step)
    total = cfg.epochs * steps_per_epoch
    order_rng = np.random.default_rng(spec.seed)
    orders = [order_rng.permutation(len(examples)).tolist() for _ in range(cfg.epochs)]

    torch.manual_seed(spec.seed)  # LoRA init and dropout
    model = build_peft_model(spec, device=device, dtype=resolve_dtype(cfg.dtype, device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(cfg.lr_scheduler, cfg.warmup_steps, total)
    )
    start, trained_tokens, resumed = 0, 0, None
    checkpoints = list_checkpoints(Path(spec.job_dir))
    if checkpoints:
        start, trained_tokens, orders = _load_checkpoint(
            checkpoints[-1], model, optimizer, scheduler, ranks
        )
        resumed = start
        log.info("resuming from %s", checkpoints[-1])
    net: torch.nn.Module = model
    if ranks.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    reporter.update(
        force=True,
        status="running",
        step=start,
        total_steps=total,
        examples=len(examples),
        truncated_examples=truncated,
        resumed_from_step=resumed,
        trained_tokens=trained_tokens,
    )

    net.train()
    for step in range(start, total):
        began = time.perf_counter()
        epoch, k = divmod(step, steps_per_epoch)
        batch = [examples[i] for i in orders[epoch][k * per_step : (k + 1) * per_step]]
        step_labels = sum(ex.num_trained for ex in batch)
        chunks = [batch[i : i + cfg.batch_size] for i in range(0, len(batch), cfg.batch_size)]
        mine = chunks[ranks.rank :: ranks.world]
        loss_sum = _accumulate(
            net,
            mine,
            filler=batch[:1],
            scale=ranks.world / step_labels,
            pad_id=pad_id,
            device=device,
        )
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = ranks.sum(loss_sum, device)
        trained_tokens += step_labels
        done = step + 1
        checkpoint = done % cfg.checkpoint_every_steps == 0 and done < total
        if checkpoint:
            _save_checkpoint(
                Path(spec.job_dir),
                done,
                model,
                optimizer,
                scheduler,
                ranks,
                orders=orders,
                trained_tokens=trained_tokens,
                keep=cfg.keep_checkpoints,
            )
        elapsed = time.perf_counter() - began
        reporter.update(
            force=checkpoint,
            step=done,
            epoch=epoch,
            loss=loss_sum / step_labels,
            tokens_per_s=sum(len(ex.input_ids) for ex in batch) / max(elapsed, 1e-9),
            trained_tokens=trained_tokens,
        )

    if ranks.main:
        _save_adapter_atomic(model, Path(spec.out_dir))
        log.info("saved adapter to %s after %d steps", spec.out_dir, total)
    ranks.barrier()
    reporter.update(force=True, status="succeeded", step=total)
    if ranks.world > 1:
        torch.distributed.destroy_process_group()


def _device(name: DeviceName, ranks: Ranks) -> torch.device:
    if ranks.world > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
        torch.cuda.set_device(ranks.local_rank)  # one device per rank
        return torch.device("cuda", ranks.local_rank)
    device: torch.device = resolve_device(name)
    return device


def build_peft_model(spec: LoraJobSpec, *, device: torch.device, dtype: torch.dtype) -> Any:
    """The base model with a trainable LoRA adapter: the job's previous one, or a fresh one."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = spec.config
    with quiet_progress():  # also hides peft's transformers-5 deprecation notice
        base = AutoModelForCausalLM.from_pretrained(spec.base_model, dtype=dtype)
        if spec.init_adapter is not None:
            if not (Path(spec.init_adapter) / "adapter_config.json").is_file():
                raise TrainingError(f"previous adapter not found: {spec.init_adapter}")
            model = PeftModel.from_pretrained(base, spec.init_adapter, is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(base, lora)
    return model.to(device)


def _accumulate(
    net: torch.nn.Module,
    chunks: Sequence[Sequence[TokenizedExample]],
    *,
    filler: Sequence[TokenizedExample],
    scale: float,
    pad_id: int,
    device: torch.device,
) -> float:
    """Backward over this rank's micro-batches; returns their summed token loss."""
    if not chunks:
        # A rank with no examples in the last, partial step must still join the gradient
        # all-reduce of DistributedDataParallel (or the others wait forever): it contributes
        # a zero-weighted pass over `filler`.
        loss = token_loss_sum(net, filler, pad_id=pad_id, device=device)
        torch.autograd.backward(loss * 0.0)
        return 0.0
    total = 0.0
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        sync: AbstractContextManager[Any] = nullcontext()
        if isinstance(net, torch.nn.parallel.DistributedDataParallel) and not last:
            sync = net.no_sync()  # gradients are all-reduced once, after the last micro-batch
        with sync:
            loss = token_loss_sum(net, chunk, pad_id=pad_id, device=device)
            torch.autograd.backward(loss * scale)
        total += float(loss.detach())
    return total


def collate(
    examples: Sequence[TokenizedExample], *, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded to the longest example."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def token_loss_sum(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    pad_id: int,
    device: torch.device,
) -> torch.Tensor:
    """Summed next-token cross-entropy over the trained tokens of `examples`."""
    ids, mask, labels = collate(examples, pad_id=pad_id, device=device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    # Only trained positions go through the float32 cross-entropy: the full logits of a large
    # vocabulary in float32 would dominate memory.
    picked = logits[:, :-1][trained].float()
    return F.cross_entropy(picked, targets[trained], reduction="sum")


@torch.no_grad()
def mean_token_loss(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    pad_id: int,
    batch_size: int = 8,
) -> float:
    """Mean loss per trained token over `examples` (evaluation; dropout off)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = sum(
        float(token_loss_sum(model, examples[i : i + batch_size], pad_id=pad_id, device=device))
        for i in range(0, len(examples), batch_size)
    )
    model.train(was_training)
    return total / sum(ex.num_trained for ex in examples)


def _lr_factor(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------- checkpoints


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _save_checkpoint(
    job_dir: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ranks: Ranks,
    *,
    orders: list[list[int]],
    trained_tokens: int,
    keep: int,
) -> None:
    """Write checkpoints/step-N/: in a temp dir, marked complete last, flushed to disk, then
    renamed into place (a dir without the marker is ignored); keep the last `keep`."""
    root = job_dir / "checkpoints"
    tmp, final = root / f".step-{step}.tmp", root / f"step-{step}"
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier()
    torch.save(_rng_state(), tmp / f"rng-{ranks.rank}.pt")  # dropout differs per rank
    ranks.barrier()
    if ranks.main:
        with quiet_progress():
            model.save_pretrained(tmp / "adapter")  # loadable on its own, for inspection
        state = {
            "step": step,
            "trainable": _trainable(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "orders": orders,
            "trained_tokens": trained_tokens,
            "world": ranks.world,
        }
        torch.save(state, tmp / "state.pt")
        (tmp / CHECKPOINT_COMPLETE).write_text(f"{step}\n")
        replace_dir_durably(tmp, final)  # flushed before it is named step-N
        log.info("checkpoint %s", final)
        for old in list_checkpoints(job_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    ranks.barrier()


def _load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ranks: Ranks,
) -> tuple[int, int, list[list[int]]]:
    """Restore everything `_save_checkpoint` wrote; returns (step, trained tokens, orders)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if state["world"] != ranks.world:
        raise TrainingError(
            f"checkpoint {path} was written by {state['world']} processes, this run has "
            f"{ranks.world}: resume with the same number or delete {path.parent}"
        )
    saved = state["trainable"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = torch.load(path / f"rng-{ranks.rank}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"]), int(state["trained_tokens"]), state["orders"]


def _save_adapter_atomic(model: Any, out_dir: Path) -> None:
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_progress():
        model.save_pretrained(tmp)
    replace_dir_durably(tmp, out_dir)
