"""A tiny causal LM and its tokenizer, built locally in well under a second of CPU.

Tests, benchmarks and offline demos need a real `transformers` model that loads through the
normal code path (`AutoModelForCausalLM` / `AutoTokenizer` from a directory) without a model hub.
`build_tiny_lm` writes one: a randomly initialised Llama- or Qwen2-style decoder (deterministic
from `seed`) and a byte-level BPE tokenizer trained on a small corpus with the `tokenizers`
library, carrying ChatML special tokens and a chat template with `{% generation %}` markers (so
assistant-only loss masks can be read from the template).

Byte-level means every string is representable, whatever the corpus; the corpus only decides
which merges exist, i.e. how short typical prompts become.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from rmft_api.errors import ConfigError
from rmft_api.models.loading import quiet_progress

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|im_start|>"  # opens every chat message
EOS_TOKEN = "<|im_end|>"  # closes every chat message; generation stops on it
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

# ChatML, with the assistant content (and its closing token, which the model must learn to emit)
# inside {% generation %} so `return_assistant_tokens_mask=True` marks exactly the trained tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Enough of the decision-task vocabulary that typical prompts compress a few-fold.
DEFAULT_CORPUS: tuple[str, ...] = (
    "You are choosing between options over many rounds to collect as much reward as possible.",
    "In each round you pick one option and observe its reward.",
    "Round 1 of 100. You chose option A and received reward 1.",
    "Round 2 of 100. You chose option B and received reward 0.",
    "So far: option A was chosen 3 times with average reward 0.67; option B 2 times, 0.50.",
    "Think step by step, then answer on the last line as ANSWER: <option>.",
    "I should explore options I have not tried yet, then exploit the best one.",
    "ANSWER: A\nANSWER: B\nANSWER: C\nANSWER: D\nANSWER: E",
    "Give a probability for every option; the probabilities must sum to 1.",
    "ANSWER: 0.2, 0.2, 0.2, 0.2, 0.2",
    "blue button, red button, green button, yellow button, purple button",
    "advertisement, patient, treatment, recommendation, restaurant, slot machine, expert",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 . , : ; ( ) %",
)

Architecture = Literal["llama", "qwen2"]


def build_tokenizer(*, corpus: Iterable[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` with ChatML special tokens and chat template.

    Training is deterministic for a given corpus (the merges are ranked by count, ties by bytes).
    Returns the tokenizer object (typed `Any`: transformers ships no type information).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fast_tokenizer: Any = PreTrainedTokenizerFast  # untyped constructor

    texts = list(DEFAULT_CORPUS if corpus is None else corpus)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
            f"{len(alphabet) + len(SPECIAL_TOKENS)} (256 bytes + special tokens)"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return fast_tokenizer(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_lm(
    out_dir: Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 8192,
    initializer_range: float = 0.2,
    architecture: Architecture = "llama",
) -> Path:
    """Write a randomly initialised tiny causal LM + tokenizer to `out_dir` and return it.

    The directory loads back with `AutoModelForCausalLM.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)`. Weights are a pure function of `seed` and the sizes
    (the global torch RNG is forked, not disturbed). `num_kv_heads` defaults to `num_heads`
    (no grouped-query attention), `intermediate_size` to `4 * hidden_size`. `initializer_range`
    (weight std) is larger than transformers' 0.02 so that an untrained model's greedy output
    still depends on its prompt, which tests of batching and padding need.
    """
    import torch
    import transformers

    hf: Any = transformers  # untyped constructors

    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % kv_heads:
        raise ConfigError(f"num_heads {num_heads} must be a multiple of num_kv_heads {kv_heads}")

    tokenizer = build_tokenizer(corpus=corpus, vocab_size=vocab_size)
    ids = {tok: int(tokenizer.convert_tokens_to_ids(tok)) for tok in SPECIAL_TOKENS}
    shape: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": True,
        "initializer_range": initializer_range,
        "pad_token_id": ids[PAD_TOKEN],
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": ids[EOS_TOKEN],
    }
    config = hf.LlamaConfig(**shape) if architecture == "llama" else hf.Qwen2Config(**shape)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = hf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = hf.GenerationConfig(
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        do_sample=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out
