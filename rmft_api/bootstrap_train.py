"""Pre-training the bootstrap model: packed single-turn chats and a plain full-parameter loop.

A single-turn episode asks T chats that share their system prompt. Packing puts the system prompt
once, then several rounds (user turn + reply) after it, with an attention mask under which each
round sees only the system prompt and itself, and position ids that restart after the system
prompt: every round is computed exactly as the chat the model is later asked alone (checked in
tests/test_bootstrap.py), at a fraction of the tokens. Loss is on the replies (and their end
token) only, and the output head runs only where there is a label.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rmft_api.bootstrap_data import SyntheticChat
from rmft_api.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_COPY_SHARPNESS = 24.0  # query/key gain of the copy heads
_COPY_GAIN = 6.0  # output scale of the copied name embeddings
_BIND_SHARPNESS = 4.0  # binding heads: bias size per rotary pair
_BIND_GAIN = 1.0  # output scale of the bound name


@dataclass(frozen=True)
class PackedSequence:
    """One system prompt followed by several rounds; segment 0 is the shared prefix."""

    ids: list[int]
    labels: list[int]  # the reply's tokens (and end token), IGNORE_INDEX elsewhere
    positions: list[int]
    segments: list[int]


def new_model(
    tokenizer: Any,
    *,
    seed: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    names: Sequence[str],
    means: Sequence[str],
) -> Any:
    """A random-init Llama for `tokenizer` with a copy prior for arm names (see `_copy_prior`).

    Shaped like models/tiny.py's (ChatML ids, tied embeddings), with attention biases: the copy
    heads' queries are a constant bias.
    """
    import transformers

    hf: Any = transformers
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in ("<|pad|>", "<|im_start|>")}
    eos = int(tokenizer.eos_token_id)
    config = hf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=True,
        initializer_range=0.02,
        pad_token_id=ids["<|pad|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = hf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = hf.GenerationConfig(
            pad_token_id=ids["<|pad|>"],
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=eos,
            do_sample=False,
        )
        _copy_prior(model, tokenizer, names=names, means=means)
    return model


def _copy_prior(model: Any, tokenizer: Any, *, names: Sequence[str], means: Sequence[str]) -> None:
    """Start the attention as a reader of the per-arm summary instead of noise.

    A policy must answer with one of the arm names its prompt lists (a few hundred rare tokens)
    and, to decide well, tie each name to the count and mean printed after it. A tiny model
    learns such in-context copying from scratch only after a long plateau (longer, in this
    builder's development runs, than the few minutes of CPU it is given), so the weights start
    with the circuit's shape:

    - embeddings: every name = a shared "name" direction + its own vector in a `head_dim`-wide
      name subspace; every displayed mean = a "number" direction + its value along a "value"
      direction (+ a small own part);
    - layer 0, "binding" heads: constant query/key biases whose rotary phases make head 0 look
      exactly 6 tokens back (a mean to its arm name: `Red played 3, mean 0.67`) and head 1 two
      back (a count or `not tried` to its name); their value/output copies the name subspace;
    - last layer, "copy" heads: query from the lone space token that precedes every name, key
      on the name direction, value/output copying the name subspace, so the answer starts as
      "one of the names present"; which one (highest mean, untried, ...) is learned.
    """
    hidden = int(model.config.hidden_size)
    heads = int(model.config.num_attention_heads)
    head_dim = hidden // heads
    if heads < 2 or hidden < head_dim + 8:
        raise ConfigError(
            f"bootstrap model: {heads} heads of {head_dim} in {hidden} leave no room for the "
            "copy prior; use at least 2 heads and hidden_size ≥ head size + 8"
        )
    weight = model.get_input_embeddings().weight
    basis = torch.linalg.qr(torch.randn(hidden, hidden))[0].T  # orthonormal rows
    name_space = basis[:head_dim]
    name_dir, number_dir, value_dir, space = basis[head_dim : head_dim + 4]
    rest = basis[head_dim + 4 :]
    with torch.no_grad():
        # Other tokens keep out of the reserved directions, so nothing but a name is ever
        # read as one by the heads below.
        reserved = basis[: head_dim + 4]
        weight -= (weight @ reserved.T) @ reserved
        for token in names:
            own = F.normalize(torch.randn(head_dim), dim=0) @ name_space
            weight[int(tokenizer.convert_tokens_to_ids(token))] = 0.5 * name_dir + own
        for token in means:
            own = F.normalize(torch.randn(len(rest)), dim=0) @ rest
            value = 2.0 * float(token) - 1.0
            weight[int(tokenizer.convert_tokens_to_ids(token))] = (
                number_dir + value * value_dir + 0.3 * own
            )
        binding = model.model.layers[0].self_attn
        inv_freq = _rotary_inv_freq(model)
        for head, back in ((0, 6), (1, 2)):
            _positional_head(binding, head, head_dim, inv_freq=inv_freq, back=back)
            _copy_values(binding, head, head_dim, name_space, gain=_BIND_GAIN)
        # Every name follows a lone space token (the added tokens split it off): a direction of
        # its own, large enough to survive into the last layer, is where the copy heads query.
        weight[int(tokenizer.convert_tokens_to_ids("Ġ"))] = space
        gain = _COPY_SHARPNESS / hidden**0.5
        copy = model.model.layers[-1].self_attn
        slow = head_dim // 2 - 1  # the rotary pair (slow, slow + head_dim/2) barely turns
        for head in range(min(2, heads)):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            for proj in (copy.q_proj, copy.k_proj):
                proj.weight[rows] = 0.0
                proj.bias[rows] = 0.0
            copy.q_proj.weight[head * head_dim + slow] = gain * space
            copy.k_proj.weight[head * head_dim + slow] = gain * name_dir
            _copy_values(copy, head, head_dim, name_space, gain=_COPY_GAIN)


def _rotary_inv_freq(model: Any) -> torch.Tensor:
    rotary = model.model.rotary_emb
    return torch.as_tensor(rotary.inv_freq, dtype=torch.float32).flatten()


def _positional_head(
    attention: Any, head: int, head_dim: int, *, inv_freq: torch.Tensor, back: int
) -> None:
    """Constant query and key whose rotary phase difference peaks the score at `back` tokens."""
    rows = slice(head * head_dim, (head + 1) * head_dim)
    half = head_dim // 2
    for proj in (attention.q_proj, attention.k_proj):
        proj.weight[rows] = 0.0
        proj.bias[rows] = 0.0
    for i in range(min(4, half)):  # the fastest-turning pairs tell neighbours apart
        angle = float(inv_freq[i]) * back
        attention.q_proj.bias[head * head_dim + i] = _BIND_SHARPNESS
        attention.k_proj.bias[head * head_dim + i] = _BIND_SHARPNESS * math.cos(angle)
        attention.k_proj.bias[head * head_dim + i + half] = _BIND_SHARPNESS * math.sin(angle)


def _copy_values(
    attention: Any, head: int, head_dim: int, subspace: torch.Tensor, *, gain: float
) -> None:
    rows = slice(head * head_dim, (head + 1) * head_dim)
    attention.v_proj.weight[rows] = subspace
    attention.v_proj.bias[rows] = 0.0
    attention.o_proj.weight[:, rows] = gain * subspace.T


def _render(tokenizer: Any, chat: SyntheticChat, *, upto: int, prompt: bool) -> str:
    messages = [{"role": m.role, "content": m.content} for m in chat.messages[:upto]]
    text: str = tokenizer.apply_chat_template(
        messages, add_generation_prompt=prompt, tokenize=False
    )
    return text


def pack_episodes(
    tokenizer: Any,
    chats: Sequence[SyntheticChat],
    *,
    rounds_per_pack: int,
) -> list[PackedSequence]:
    """Pack each episode's rounds, `rounds_per_pack` at a time, behind one copy of its prefix.

    Raises TrainingError when the chat template does not render the system prompt as a prefix
    of the round's prompt, or when tokenizing at that boundary would differ from tokenizing the
    whole prompt (packing would then train on other tokens than generation sees).
    """
    eos = tokenizer.eos_token or ""
    packs: list[PackedSequence] = []
    checked = False
    for _, group in groupby(chats, key=lambda c: c.episode):
        rounds = list(group)
        prefix = _render(tokenizer, rounds[0], upto=1, prompt=False)
        prompts = [_render(tokenizer, c, upto=len(c.messages), prompt=True) for c in rounds]
        if any(not p.startswith(prefix) for p in prompts):
            raise TrainingError("the chat template does not render the system prompt as a prefix")
        prefix_ids: list[int] = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        rests = tokenizer([p[len(prefix) :] for p in prompts], add_special_tokens=False)
        replies = tokenizer([c.reply + eos for c in rounds], add_special_tokens=False)
        if not checked:
            whole = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
            if whole != prefix_ids + rests["input_ids"][0]:
                raise TrainingError("tokenizing the system prompt apart changes the tokens")
            checked = True
        n = len(prefix_ids)
        for start in range(0, len(rounds), rounds_per_pack):
            ids, labels = list(prefix_ids), [IGNORE_INDEX] * n
            positions, segments = list(range(n)), [0] * n
            for j in range(start, min(start + rounds_per_pack, len(rounds))):
                rest, reply = rests["input_ids"][j], replies["input_ids"][j]
                ids += rest + reply
                labels += [IGNORE_INDEX] * len(rest) + reply
                positions += list(range(n, n + len(rest) + len(reply)))
                segments += [j - start + 1] * (len(rest) + len(reply))
            packs.append(PackedSequence(ids, labels, positions, segments))
    return packs


def collate_packed(
    packs: Sequence[PackedSequence], *, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, labels, position ids, boolean 4-D attention mask), right-padded.

    A token attends to earlier tokens of its own round and to the shared prefix; padding
    attends to itself only (so no softmax row is empty) and nothing attends to padding.
    """
    width = max(len(p.ids) for p in packs)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(packs), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    segments = torch.full((len(packs), width), -1, dtype=torch.long)
    for row, p in enumerate(packs):
        n = len(p.ids)
        ids[row, :n] = torch.tensor(p.ids)
        labels[row, :n] = torch.tensor(p.labels)
        positions[row, :n] = torch.tensor(p.positions)
        segments[row, :n] = torch.tensor(p.segments)
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows keep one key
    return ids, labels, positions, allowed[:, None]


def packed_loss(model: Any, batch: Sequence[PackedSequence], *, pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of `batch`."""
    ids, labels, positions, mask = collate_packed(batch, pad_id=pad_id)
    hidden = model.get_decoder()(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][trained])
    return F.cross_entropy(logits.float(), targets[trained])


def pretrain(
    model: Any,
    packs: Sequence[PackedSequence],
    *,
    pad_id: int,
    seed: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    on_step: Callable[[int, int, float], None] | None = None,
) -> float:
    """AdamW with linear warmup then cosine decay; returns the mean loss of the last 10% steps.

    `on_step(done, steps, loss)` is told every 50 steps and at the end (progress display).

    Batches are drawn in a seeded order from length-sorted blocks, so little is padding.
    """
    if not packs:
        raise TrainingError("the bootstrap produced no training examples")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A]))
    order = _length_blocked_order(packs, batch_size=batch_size, rng=rng)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.98)
    )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    tail: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            batch = [packs[i] for i in order[step % len(order)]]
            loss = packed_loss(model, batch, pad_id=pad_id)
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if step >= steps - max(1, steps // 10):
                tail.append(value)
            if step % 50 == 0:
                log.debug("bootstrap step %d/%d loss %.3f", step, steps, value)
            if on_step is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
                on_step(step + 1, steps, value)
    model.eval()
    return float(np.mean(tail)) if tail else float("nan")


def _length_blocked_order(
    packs: Sequence[PackedSequence], *, batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Batches of similar lengths, in random order (shuffle, sort within blocks, cut)."""
    shuffled = rng.permutation(len(packs))
    block = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(shuffled), block):
        chunk = sorted(shuffled[start : start + block], key=lambda i: len(packs[i].ids))
        batches += [
            [int(i) for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)
        ]
    return [batches[int(i)] for i in rng.permutation(len(batches))]
