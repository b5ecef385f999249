"""A local transformers model as a provider: left-padded batched `generate` in a worker thread.

Spec: `hf/<dir-or-name>[+<adapter-dir>]`. The chat is rendered with the tokenizer's own chat
template (`add_generation_prompt=True`); a batch is left-padded so every row's next token sits in
the last column, which makes a prompt's greedy continuation the same alone or in a batch.

Determinism: greedy decoding (temperature 0) depends only on the prompt. Sampling is per row: each
request draws Gumbel noise from its own generator, seeded by the sampling seed and its request id
(Gumbel-max over the temperature-scaled, nucleus-filtered logits is exactly a softmax sample), so
a reply depends on its prompt, seed and request id only, not on its batch companions: a lock-step
rollout resumed after a kill batches differently and still gets the same replies.

Generation stops per row at the end-of-sequence token, at any `stop` string (excluded from the
text, as OpenAI does) or, with `answer_marker` set, where the answer after the first marker ends
(its line, or its closing `}`): the reply is complete there, and a small model would otherwise
ramble on to max_tokens. A marker written mid-reasoning therefore ends the reply early; set
`policy.stop_after_answer = false` for models that do that.

Speed (the fast path): each chat's first message (the system prompt, which every round of an
episode repeats) is prefilled once and its keys and values reused (hf_prefix.py); a batch of
several rows decodes into a preallocated KV cache instead of one grown by concatenation at every
step, prefills a few rows per call and builds its attention masks once per forward (hf_batch.py).
These build on transformers internals, so they are used only on the transformers releases they
were tested with; elsewhere, or if they fail at run time, the provider says so once in the log
and uses the public path: plain left-padded batched `generate`, with the same greedy replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmft_api.models.loading import DeviceName, DtypeName, load_causal_lm
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.hf_batch import (
    ADDITIVE_SDPA,
    FastPathMode,
    batch_cache,
    cache_keyword,
    fast_path_decision,
    use_additive_masks,
)
from rmft_api.providers.hf_prefix import PrefixCache, supports_prefix_cache
from rmft_api.schema import Completion, Message, Usage

log = logging.getLogger(__name__)

# A code-fence opener (```json) the model may put between the marker and its answer.
_FENCE_RE = re.compile(r"(?:```|~~~)[A-Za-z]*")


class _RowStopper:
    """A transformers StoppingCriteria that records, per row, the step at which it finished."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt_len: int,
        batch: int,
        eos_ids: set[int],
        stop: Sequence[str],
        answer_marker: str | None,
    ) -> None:
        self._tokenizer = tokenizer
        self._prompt_len = prompt_len
        self._eos_ids = eos_ids
        self._stop = list(stop)
        self._marker = answer_marker
        # Text of each row so far, decoded one token at a time: cheap, and exact for the ASCII
        # markers searched here (a split multi-byte character only garbles itself).
        self._texts = [""] * batch
        self.done_at: list[int | None] = [None] * batch

    def _finished(self, text: str) -> bool:
        if any(s in text for s in self._stop):
            return True
        return self._marker is not None and answer_end(text, self._marker) is not None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        steps = int(input_ids.shape[1]) - self._prompt_len
        last = input_ids[:, -1].tolist()
        pieces = self._tokenizer.batch_decode([[t] for t in last], skip_special_tokens=True)
        done = torch.zeros(len(last), dtype=torch.bool, device=input_ids.device)
        for row, (token, piece) in enumerate(zip(last, pieces, strict=True)):
            if self.done_at[row] is not None:
                done[row] = True
                continue
            self._texts[row] += piece
            if token in self._eos_ids or self._finished(self._texts[row]):
                self.done_at[row] = steps
                done[row] = True
        return done


class _RowSampler:
    """A LogitsProcessor making greedy decoding sample each row from its own seeded generator."""

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float) -> None:
        import torch

        self._generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self._temperature = temperature
        self._top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float() / self._temperature
        if self._top_p < 1.0:
            # Keep the smallest set of most likely tokens whose mass reaches top_p.
            ordered, index = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > self._top_p
            ordered = ordered.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, index, ordered)
        vocab = int(scores.shape[-1])
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self._generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
        return scores + gumbel.to(scores.device)


def answer_end(text: str, marker: str) -> int | None:
    """Where the answer after the first `marker` ends, or None while it is still incomplete.

    A `{...}` answer (a distribution, which may span lines) ends after its `}`; any other answer
    at the newline that ends its first non-empty line (the parser reads that line). Leading
    markdown and a code-fence opener are skipped, as the parser skips them.
    """
    at = text.find(marker)
    if at < 0:
        return None
    pos = at + len(marker)
    while True:
        while pos < len(text) and text[pos] in " \t\r\n*_":
            pos += 1
        fence = _FENCE_RE.match(text, pos)
        if fence is None:
            break
        pos = fence.end()
    if pos >= len(text):
        return None
    if text[pos] == "{":
        close = text.find("}", pos)
        return None if close < 0 else close + 1
    newline = text.find("\n", pos)
    return None if newline < 0 else newline


def trim_reply(text: str, *, stop: Sequence[str], answer_marker: str | None) -> str:
    """Cut the reply at the first stop string (excluded) or where the answer ends."""
    cut = len(text)
    for s in stop:
        at = text.find(s)
        if at >= 0:
            cut = min(cut, at)
    if answer_marker is not None:
        end = answer_end(text[:cut], answer_marker)
        if end is not None:
            cut = end
    return text[:cut]


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


class HFProvider:
    """A local causal LM answering chats in padded batches of up to `batch_size`."""

    def __init__(
        self,
        spec: str,
        *,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        batch_size: int = 16,
        device: DeviceName = "auto",
        dtype: DtypeName = "auto",
        answer_marker: str | None = None,
        seed: int = 0,
        prefix_cache_tokens: int = 32768,
        fast_path: FastPathMode = "auto",
    ) -> None:
        """
        Args:
            prefix_cache_tokens: tokens of chat prefixes (each chat's first message) whose keys
                and values are kept between calls, so a system prompt is prefilled once per
                episode, not once per round (see hf_prefix.py); 0 turns it off.
            fast_path: auto = the fast path on tested transformers releases only (see
                hf_batch.fast_path_decision); on / off force it.
        """
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self.answer_marker = answer_marker
        self._seed = seed
        self._model, self._tokenizer = load_causal_lm(
            model_path, adapter_path=adapter_path, device=device, dtype=dtype
        )
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            # Pad with EOS when the tokenizer has no pad token; attention masks hide it anyway.
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._eos_ids = self._collect_eos_ids()
        self._static_cache = False
        self.prefix_cache: PrefixCache | None = None
        import transformers

        self.fast_path, why = fast_path_decision(fast_path, transformers.__version__)
        if self.fast_path:
            try:
                self._enable_fast_path(prefix_cache_tokens)
            except Exception as e:  # internals moved: the public path still works
                self._disable_fast_path(f"setting it up failed ({type(e).__name__}: {e})")
        elif fast_path == "auto":
            log.warning("%s: %s", spec, why)
        # torch's RNG is process-global: one generate at a time per provider.
        self._lock = threading.Lock()
        self.batches = 0  # generate calls made (a lock-step rollout makes one per round)

    @property
    def device(self) -> Any:
        return self._model.device

    def _enable_fast_path(self, prefix_cache_tokens: int) -> None:
        # Batch-layout costs cut without changing any row's result (hf_batch.py).
        use_additive_masks(self._model)
        # Preallocated KV caches for batches (see _static_cache_for); off where unsupported.
        self._static_cache = bool(self._model._supports_default_dynamic_cache())
        if prefix_cache_tokens > 0 and self._static_cache and supports_prefix_cache(self._model):
            self.prefix_cache = PrefixCache(
                self._model, tokenize=self._token_ids, max_tokens=prefix_cache_tokens
            )

    def _disable_fast_path(self, reason: str) -> None:
        """From now on, the public path: plain batched `generate`, transformers' own attention."""
        import transformers

        log.warning(
            "%s: the lock-step fast path is off for this provider, using the public generate "
            "path (same replies, slower): %s on transformers %s",
            self.spec,
            reason,
            transformers.__version__,
        )
        self.fast_path = False
        self._static_cache = False
        self.prefix_cache = None
        if getattr(self._model.config, "_attn_implementation", None) == ADDITIVE_SDPA:
            self._model.set_attn_implementation("sdpa")

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self._model.generation_config.eos_token_id, self._tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(x) for x in source)
        return ids

    def render(self, chat: Sequence[Message]) -> str:
        """The exact prompt text the model sees for `chat` (chat template + generation prompt).

        A chat ending with an assistant turn (`prompt.reply_prefix`) is continued: that turn is
        left open and the model writes on from its last character.
        """
        messages = [{"role": m.role, "content": m.content} for m in chat]
        go_on = bool(chat) and chat[-1].role == "assistant"
        text: str = self._tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not go_on,
            continue_final_message=go_on,
            tokenize=False,
        )
        return text

    def _prefix_text(self, chat: Sequence[Message]) -> str | None:
        """The rendered first message, when more follows it (the part rounds share)."""
        if self.prefix_cache is None or len(chat) < 2:
            return None
        first = [{"role": chat[0].role, "content": chat[0].content}]
        text: str = self._tokenizer.apply_chat_template(first, tokenize=False)
        return text

    def _token_ids(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        ids = list(request_ids) if request_ids is not None else [str(i) for i in range(len(chats))]
        return await asyncio.to_thread(self._generate_all, chats, sampling, ids)

    async def aclose(self) -> None:
        """Nothing to release eagerly; the model goes with the object."""

    # ------------------------------------------------------------------ worker thread

    def _generate_all(
        self, chats: Sequence[Sequence[Message]], sampling: SamplingParams, ids: list[str]
    ) -> list[Completion]:
        prompts = [self.render(chat) for chat in chats]
        prefixes = [self._prefix_text(chat) for chat in chats]
        results: list[Completion] = []
        with self._lock:
            start = 0
            while start < len(prompts):
                end = min(len(prompts), start + self.batch_size)
                try:
                    results.extend(
                        self._generate_chunk(
                            prompts[start:end],
                            sampling,
                            ids[start:end],
                            prefixes=prefixes[start:end],
                        )
                    )
                except Exception as e:
                    if not _is_oom(e) and self.fast_path:
                        # Internals moved under the fast path: redo this chunk without it.
                        self._disable_fast_path(f"{type(e).__name__}: {e}")
                        continue
                    if not _is_oom(e):
                        raise
                    self._release_cache()
                    if end - start == 1:
                        results.append(Completion(error=f"out of memory on one prompt: {e}"))
                        start = end
                        continue
                    # Keep the halved size: the next batches would run out of memory as well.
                    self.batch_size = max(1, (end - start) // 2)
                    log.warning("out of memory; batch size halved to %d", self.batch_size)
                    continue
                start = end
        return results

    def _release_cache(self) -> None:
        import torch

        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _eos_end(self, tokens: Sequence[int]) -> int | None:
        """Tokens up to and including the first end-of-sequence token; None if there is none."""
        for i, token in enumerate(tokens):
            if token in self._eos_ids:
                return i + 1
        return None

    def _static_cache_for(self, length: int) -> Any:
        """A KV cache allocated once for the whole generation of a batch of several rows.

        The default dynamic cache grows by concatenation, copying every row's keys and values at
        every step: for a batch of 64 on a CPU that copy was the largest cost of a step (a static
        cache cut a step from ~7 to ~4 ms there); one row gains nothing. Sized to this call
        (prompt + max new tokens), so one long prompt does not slow every later batch.
        """
        return batch_cache(self._model.config, max_cache_len=length, device=self.device)

    def _row_seeds(self, sampling: SamplingParams, ids: Sequence[str]) -> list[int]:
        base = self._seed if sampling.seed is None else sampling.seed
        digests = [hashlib.sha256(f"{base}|{rid}".encode()).digest() for rid in ids]
        return [int.from_bytes(d[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF for d in digests]

    def _generate_chunk(
        self,
        prompts: list[str],
        sampling: SamplingParams,
        ids: Sequence[str],
        *,
        prefixes: Sequence[str | None] | None = None,
    ) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        began = time.perf_counter()
        self.batches += 1
        options: dict[str, Any] = {}
        batch = None
        if self.prefix_cache is not None and prefixes is not None and any(prefixes):
            batch = self.prefix_cache.build(
                [self._token_ids(p) for p in prompts],
                prefixes,
                pad_id=int(self._tokenizer.pad_token_id),
                new_tokens=sampling.max_tokens,
            )
        if batch is not None:
            enc: Any = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            options[cache_keyword()] = batch.cache
            prompt_len = batch.prompt_len
        else:
            enc = self._tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            prompt_len = int(enc["input_ids"].shape[1])
        # Stop strings and the answer marker need each row's text as it grows; end-of-sequence
        # tokens alone are handled by `generate` itself: then the per-step decoding (a tokenizer
        # call every step) is skipped and each row's end is read off its tokens afterwards.
        stopper: _RowStopper | None = None
        if sampling.stop or self.answer_marker is not None:
            stopper = _RowStopper(
                self._tokenizer,
                prompt_len=prompt_len,
                batch=len(prompts),
                eos_ids=self._eos_ids,
                stop=sampling.stop,
                answer_marker=self.answer_marker,
            )
            options["stopping_criteria"] = StoppingCriteriaList([stopper])
        if len(prompts) > 1 and self._static_cache and batch is None:
            options[cache_keyword()] = self._static_cache_for(prompt_len + sampling.max_tokens)
        # Sampling is greedy decoding over per-row Gumbel-perturbed logits (see _RowSampler).
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            processors.append(
                _RowSampler(
                    self._row_seeds(sampling, ids),
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                )
            )
        with torch.inference_mode():
            out = self._model.generate(
                **enc,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=sampling.max_tokens,
                logits_processor=processors,
                pad_token_id=self._tokenizer.pad_token_id,
                eos_token_id=sorted(self._eos_ids) or None,
                **options,
            )
        generated = out[:, prompt_len:].tolist()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        latency = time.perf_counter() - began
        completions: list[Completion] = []
        for row, tokens in enumerate(generated):
            done_at = stopper.done_at[row] if stopper is not None else self._eos_end(tokens)
            n_tokens = len(tokens) if done_at is None else done_at
            text = self._tokenizer.decode(tokens[:n_tokens], skip_special_tokens=True)
            text = trim_reply(text, stop=sampling.stop, answer_marker=self.answer_marker)
            completions.append(
                Completion(
                    text=text,
                    finish_reason="length" if done_at is None else "stop",
                    usage=Usage(prompt_tokens=int(prompt_tokens[row]), completion_tokens=n_tokens),
                    latency_s=latency,
                )
            )
        return completions
