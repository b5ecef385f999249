"""Loading a local (or hub, where reachable) causal LM + tokenizer onto the right device, quietly.

Shared by the HF provider, the local trainer and the tiny-model builder, so that device choice
(cuda → mps → cpu), dtype choice and PEFT adapter handling mean the same thing everywhere.
Library code must not draw on the terminal, so transformers' progress bars are switched off for
the duration of each load or save.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rmft_api.errors import ConfigError, FatalProviderError

DeviceName = Literal["auto", "cuda", "mps", "cpu"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Switch transformers' tqdm bars off inside the block (restored afterwards), and the
    deprecation notice peft triggers in transformers 5 (`is_gradient_checkpointing`), which is
    theirs to fix and would otherwise land in every run's console."""
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped module functions
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def resolve_device(name: DeviceName = "auto") -> Any:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is a ConfigError."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("policy.device = 'cuda' but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("policy.device = 'mps' but MPS is not available")
    return torch.device(name)


def resolve_dtype(name: DtypeName, device: Any) -> Any:
    """`auto`: bfloat16 on a CUDA device that supports it, float32 elsewhere (CPU half is slow)."""
    import torch

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_causal_lm(
    model_path: str | Path,
    *,
    adapter_path: str | Path | None = None,
    device: DeviceName = "auto",
    dtype: DtypeName = "auto",
    merge_adapter: bool = True,
) -> tuple[Any, Any]:
    """(model in eval mode on its device, tokenizer) from a directory or a hub name.

    With `adapter_path` a PEFT adapter is applied on top and, by default, merged into the weights
    (faster generation; the files on disk are untouched). Any loading failure is a
    FatalProviderError naming the path: retrying would not help.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        with quiet_progress():
            tokenizer: Any = AutoTokenizer.from_pretrained(str(model_path))
            model: Any = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch_dtype)
    except (OSError, ValueError) as e:
        where = "directory" if Path(model_path).exists() else "name (no such local directory)"
        raise FatalProviderError(
            f"cannot load model from {where} {str(model_path)!r}: {e}".splitlines()[0]
        ) from e
    if adapter_path is not None:
        model = _apply_adapter(model, adapter_path, merge=merge_adapter)
    model.to(torch_device)
    model.eval()
    return model, tokenizer


def _apply_adapter(model: Any, adapter_path: str | Path, *, merge: bool) -> Any:
    from peft import PeftModel

    if not Path(adapter_path).is_dir():
        raise FatalProviderError(f"adapter directory not found: {str(adapter_path)!r}")
    try:
        with quiet_progress():
            peft_model = PeftModel.from_pretrained(model, str(adapter_path))
    except (OSError, ValueError, KeyError) as e:
        raise FatalProviderError(f"cannot load adapter {str(adapter_path)!r}: {e}") from e
    return peft_model.merge_and_unload() if merge else peft_model
