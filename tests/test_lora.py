"""The local LoRA trainer: assistant-only labels, real training in a subprocess, kill and resume.

Everything runs on CPU with a tiny locally built model and one torch thread, so runs are
bit-for-bit repeatable and the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rmft_api.config import LoraTrainerConfig  # noqa: E402
from rmft_api.errors import TrainingError  # noqa: E402
from rmft_api.models.tiny import build_tiny_lm  # noqa: E402
from rmft_api.schema import JobRef, Message  # noqa: E402
from rmft_api.store import read_json, write_json_atomic  # noqa: E402
from rmft_api.trainers.base import JobFailedError, Trainer, is_terminal  # noqa: E402
from rmft_api.trainers.lora import LocalLoraTrainer, main, trainer_running  # noqa: E402
from rmft_api.trainers.lora_data import (  # noqa: E402
    IGNORE_INDEX,
    read_chat_jsonl,
    tokenize_example,
    tokenize_rows,
)
from rmft_api.trainers.lora_job import (  # noqa: E402
    LoraJobSpec,
    LoraProcess,
    LoraStatus,
    list_checkpoints,
)

# peft 0.21 reads a property that transformers 5 deprecated (PeftModel.from_pretrained below).
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

ARMS = "ABCDE"


def chat_rows(n: int) -> list[dict[str, Any]]:
    """Rows whose assistant turns follow a learnable rule (the arm named in the prompt)."""
    rows = []
    for i in range(n):
        arm = ARMS[(3 * i) % 5]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You choose one option per round."},
                    {"role": "user", "content": f"Round {i}. The best option is {arm}."},
                    {"role": "assistant", "content": f"I pick the best one. ANSWER: {arm}"},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(**overrides: Any) -> LoraTrainerConfig:
    base: dict[str, Any] = {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,  # on, so that resuming must restore the RNG state
        "learning_rate": 1e-2,
        "epochs": 4,
        "batch_size": 1,
        "grad_accum": 2,  # two micro-batches per step: accumulation must resume exactly too
        "max_seq_len": 256,
        "checkpoint_every_steps": 3,
        "cpu_threads": 1,
        "device": "cpu",
        "seed": 7,
    }
    return LoraTrainerConfig(**{**base, **overrides})


def adapter_tensors(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(adapter_dir / "adapter_model.safetensors")))


def wait_terminal(trainer: Trainer, ref: JobRef, *, timeout_s: float = 60.0) -> JobRef:
    deadline = time.monotonic() + timeout_s
    while not is_terminal(ref.status):
        assert time.monotonic() < deadline, f"job still {ref.status} after {timeout_s} s"
        time.sleep(0.1)
        ref = trainer.poll(ref)
    return ref


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", chat_rows(16))


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    # In-process runs set torch's thread count (cpu_threads = 1); leave the session as found.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_in_process(
    trainer: LocalLoraTrainer, train_file: Path, *, base_policy: str, out_dir: Path
) -> JobRef:
    """Write the job exactly as `submit` does, but run the entry point in this process."""
    spec = trainer._make_spec(train_file, base_policy=base_policy, iteration=0, out_dir=out_dir)
    Path(spec.job_dir).mkdir(parents=True)
    job_file = Path(spec.job_dir) / "job.json"
    write_json_atomic(job_file, spec)
    assert main(["--job", str(job_file)]) == 0
    status = read_json(Path(spec.job_dir) / "status.json", LoraStatus)
    assert status.status == "succeeded", status.error
    return JobRef(
        backend="lora",
        job_id=spec.job_id,
        iteration=0,
        base_policy=base_policy,
        train_file=str(train_file),
        job_dir=spec.job_dir,
        out_dir=str(out_dir),
        status="running",
    )


@pytest.fixture(scope="module")
def reference(tiny: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: its adapter directory."""
    out = tmp_path_factory.mktemp("reference") / "adapter"
    run_in_process(LocalLoraTrainer(config()), train_file, base_policy=f"hf/{tiny}", out_dir=out)
    return out


def train_loss(model_dir: Path, train_file: Path, adapter: Path | None) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmft_api.trainers.lora_train import mean_token_loss

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = tokenize_rows(tokenizer, read_chat_jsonl(train_file), max_seq_len=256)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return mean_token_loss(model, examples, pad_id=tokenizer.pad_token_id)


# ---------------------------------------------------------------- labels


def test_labels_cover_exactly_the_trained_assistant_replies(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    messages = [
        Message(role="system", content="You choose."),
        Message(role="user", content="Round 1?"),
        Message(role="assistant", content="Explore. ANSWER: A"),
        Message(role="user", content="Round 2?"),
        Message(role="assistant", content="ANSWER: Z", weight=0),  # context only
        Message(role="user", content="Round 3?"),
        Message(role="assistant", content="Exploit. ANSWER: B", weight=1),
    ]
    example = tokenize_example(tokenizer, messages, max_seq_len=10_000)
    chat = [{"role": m.role, "content": m.content} for m in messages]
    # The tiny model's template marks assistant content (+ its end token) with
    # {% generation %}: an independent account of which tokens are the replies.
    rendered = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert example.input_ids == list(rendered["input_ids"])
    reply_mask = list(rendered["assistant_masks"])
    spans = [i for i, m in enumerate(reply_mask) if m]
    runs: list[list[int]] = []
    for i in spans:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    assert len(runs) == 3  # three assistant replies
    expected = set(runs[0]) | set(runs[2])  # the weight-0 reply is not trained
    trained = {i for i, label in enumerate(example.labels) if label != IGNORE_INDEX}
    assert trained == expected
    for i in trained:
        assert example.labels[i] == example.input_ids[i]
    texts = [tokenizer.decode([example.input_ids[i] for i in run]) for run in runs]
    assert texts == [
        "Explore. ANSWER: A<|im_end|>",
        "ANSWER: Z<|im_end|>",
        "Exploit. ANSWER: B<|im_end|>",
    ]

    cut = tokenize_example(tokenizer, messages, max_seq_len=runs[1][0])
    assert cut.truncated and len(cut.input_ids) == runs[1][0]
    assert {i for i, label in enumerate(cut.labels) if label != IGNORE_INDEX} == set(runs[0])


def test_rows_without_trainable_tokens_are_refused(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rows = [[Message(role="user", content="hi"), Message(role="assistant", content="x", weight=0)]]
    with pytest.raises(TrainingError, match="no trainable tokens"):
        tokenize_rows(tokenizer, rows, max_seq_len=64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(TrainingError, match=r"line 2: messages\.0\.role"):
        read_chat_jsonl(bad)


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss_on_its_examples(
    tiny: Path, train_file: Path, reference: Path
) -> None:
    before = train_loss(tiny, train_file, None)
    after = train_loss(tiny, train_file, reference)
    assert after < 0.6 * before, (before, after)


def test_killed_training_resumes_to_the_same_adapter(
    tiny: Path, train_file: Path, reference: Path, tmp_path: Path
) -> None:
    trainer = LocalLoraTrainer(config())
    out = tmp_path / "iter-000" / "adapter"
    ref = trainer.submit(train_file, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
    job_dir = Path(ref.job_dir or "")
    deadline = time.monotonic() + 60
    while not list_checkpoints(job_dir):  # kill only once a checkpoint exists
        assert time.monotonic() < deadline, (job_dir / "train.log").read_text()
        time.sleep(0.005)
    first = read_json(job_dir / "process.json", LoraProcess)
    os.killpg(first.pid, signal.SIGKILL)
    time.sleep(0.2)
    killed_at = read_json(job_dir / "status.json", LoraStatus)
    assert killed_at.status == "running"
    assert killed_at.total_steps is not None and killed_at.step < killed_at.total_steps

    # A fresh trainer, as after the orchestrator itself restarted: it must see the killed
    # process (a zombie of this test process until reaped) as dead, restart it, and re-attach.
    # Settings that do not change what is trained differ now: the job and its checkpoints stay.
    run_only = {"cpu_threads": 2, "max_restarts": 4, "stall_timeout_s": 900, "keep_checkpoints": 3}
    trainer = LocalLoraTrainer(config(**run_only))
    again = trainer.submit(train_file, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
    assert again.job_id == ref.job_id
    assert read_json(job_dir / "job.json", LoraJobSpec).config.max_restarts == 4
    ref = wait_terminal(trainer, again)  # the poll that sees it dead restarts it
    assert ref.status == "succeeded"
    status = read_json(job_dir / "status.json", LoraStatus)
    assert status.resumed_from_step is not None and status.resumed_from_step >= 3
    assert read_json(job_dir / "process.json", LoraProcess).restarts == 1
    assert ref.result_policy == f"hf/{tiny}+{out}"

    resumed, uninterrupted = adapter_tensors(out), adapter_tensors(reference)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name
    assert any(t.abs().max() > 1e-3 for n, t in uninterrupted.items() if "lora_B" in n)

    # Submitting the same inputs again re-attaches to the finished job: nothing is retrained.
    again = trainer.submit(train_file, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
    assert again.status == "succeeded" and again.job_id == ref.job_id
    assert read_json(job_dir / "process.json", LoraProcess).restarts == 1


def test_init_from_previous_continues_the_given_adapter(
    tiny: Path, train_file: Path, reference: Path, tmp_path: Path
) -> None:
    # A different rank in the config: the previous adapter's own shape must win.
    cfg = config(r=8, epochs=1, batch_size=16, grad_accum=1, learning_rate=1e-3, lora_dropout=0)
    previous = f"hf/{tiny}+{reference}"
    out = tmp_path / "continued"
    run_in_process(LocalLoraTrainer(cfg), train_file, base_policy=previous, out_dir=out)
    before, after = adapter_tensors(reference), adapter_tensors(out)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape
        # One Adam step moves each weight by about the learning rate, no more.
        assert (after[name] - tensor).abs().max() < 3e-3, name
    assert max(float(t.abs().max()) for n, t in before.items() if "lora_B" in n) > 0.02

    fresh = tmp_path / "fresh"
    run_in_process(
        LocalLoraTrainer(cfg.model_copy(update={"init_from": "base"})),
        train_file,
        base_policy=previous,
        out_dir=fresh,
    )
    continued_loss = train_loss(tiny, train_file, out)
    fresh_loss = train_loss(tiny, train_file, fresh)
    assert continued_loss < 0.7 * fresh_loss, (continued_loss, fresh_loss)


def test_a_checkpoint_without_its_marker_is_ignored(
    tiny: Path, train_file: Path, reference: Path, tmp_path: Path
) -> None:
    # A step dir whose files never reached the disk whole (no COMPLETE marker): resuming from
    # it would load garbage; the job trains from the start instead, to the same adapter.
    trainer = LocalLoraTrainer(config())
    out = tmp_path / "adapter"
    spec = trainer._make_spec(train_file, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
    torn = Path(spec.job_dir) / "checkpoints" / "step-6"
    torn.mkdir(parents=True)
    (torn / "state.pt").write_bytes(b"\x80\x02torn")
    write_json_atomic(Path(spec.job_dir) / "job.json", spec)
    assert main(["--job", str(Path(spec.job_dir) / "job.json")]) == 0
    status = read_json(Path(spec.job_dir) / "status.json", LoraStatus)
    assert status.status == "succeeded" and status.resumed_from_step is None
    written = list_checkpoints(Path(spec.job_dir))
    assert written and all((p / "COMPLETE").is_file() for p in written)
    resumed, uninterrupted = adapter_tensors(out), adapter_tensors(reference)
    for name, tensor in uninterrupted.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name


def job_processes(job_file: Path) -> list[int]:
    """Pids of the live processes running this job file (procfs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(job_file) in cmdline.split("\0") and state not in ("Z", "X"):
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs procfs")
def test_a_kill_between_start_and_record_leaves_one_trainer(tiny: Path, tmp_path: Path) -> None:
    import subprocess

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    out = tmp_path / "adapter"
    cfg = config()
    # The orchestrator starts the training process and is SIGKILLed before process.json.
    script = (
        "import sys; from pathlib import Path; from rmft_api.config import LoraTrainerConfig; "
        "from rmft_api.trainers.lora import LocalLoraTrainer; "
        "t = LocalLoraTrainer(LoraTrainerConfig.model_validate_json(sys.argv[1])); "
        "t.submit(Path(sys.argv[2]), base_policy=sys.argv[3], iteration=0, "
        "out_dir=Path(sys.argv[4]))"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, cfg.model_dump_json(), str(train), f"hf/{tiny}", str(out)],
        env={**os.environ, "RMFT_KILL_AT": "lora-started"},
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    job_dir = tmp_path / "adapter-job"
    assert not (job_dir / "process.json").exists()
    assert len(job_processes(job_dir / "job.json")) == 1  # the orphan trains on

    trainer = LocalLoraTrainer(cfg)
    ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
    seen = set()
    while not is_terminal(ref.status):
        running = job_processes(job_dir / "job.json")
        assert len(running) <= 1, running
        seen.update(running)
        time.sleep(0.1)
        ref = trainer.poll(ref)
    assert ref.status == "succeeded"
    assert len(seen) == 1  # the orphan finished the job; no second one was started
    assert (job_dir / "train.log").read_text().count("saved adapter to") == 1
    deadline = time.monotonic() + 20
    while trainer_running(job_dir):  # it wrote its final status and is exiting
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_hung_trainer_is_killed_restarted_then_failed(tiny: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RMFT_HANG_AT": "lora-validating"}  # every attempt hangs
    trainer = LocalLoraTrainer(config(stall_timeout_s=2, max_restarts=1), env=env)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(2))
    ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=tmp_path / "a")
    job_dir = Path(ref.job_dir or "")
    with pytest.raises(JobFailedError, match=r"no progress for 2 s \(trainer.stall_timeout_s\)"):
        wait_terminal(trainer, ref, timeout_s=60)
    assert read_json(job_dir / "process.json", LoraProcess).restarts == 1
    assert not trainer_running(job_dir) and job_processes(job_dir / "job.json") == []


# ---------------------------------------------------------------- failures and cancellation


def test_corrupt_train_file_fails_with_its_message(tiny: Path, tmp_path: Path) -> None:
    rows = chat_rows(3)
    lines = [json.dumps(rows[0]), json.dumps(rows[1]), '{"messages": [{"role": "user"']
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    trainer = LocalLoraTrainer(config())
    ref = trainer.submit(bad, base_policy=f"hf/{tiny}", iteration=0, out_dir=tmp_path / "a")
    with pytest.raises(JobFailedError, match="line 3 is not JSON") as info:
        wait_terminal(trainer, ref)
    assert isinstance(info.value, TrainingError)
    assert info.value.ref.status == "failed" and "line 3" in (info.value.ref.error or "")
    assert not (tmp_path / "a").exists()


def test_a_process_that_keeps_dying_is_restarted_then_failed(tiny: Path, tmp_path: Path) -> None:
    # `true` exits at once without writing a status: indistinguishable from a kill -9.
    trainer = LocalLoraTrainer(config(launcher=["true"], max_restarts=2))
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(2))
    ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=tmp_path / "a")
    with pytest.raises(JobFailedError, match="ended 3 times"):
        wait_terminal(trainer, ref, timeout_s=20)
    assert read_json(Path(ref.job_dir or "") / "process.json", LoraProcess).restarts == 2


def test_the_training_process_inherits_no_provider_key(tiny: Path, tmp_path: Path) -> None:
    # The launcher writes the child's environment next to its job file, then exits.
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[-1] + '.env', 'w'))"
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-fake-openai",
        "AZURE_OPENAI_API_KEY": "fake-azure",
        "TOGETHER_API_KEY": "fake-together",
        "AZURE_OPENAI_AD_TOKEN": "fake-entra",
        "MY_GATEWAY_API_KEY": "fake-custom",
        "LLM_GATEWAY": "fake-named-by-the-config",  # policy.api_key_env below
    }
    from rmft_api.config import config_from_dict

    key_envs = config_from_dict({"policy": {"api_key_env": "LLM_GATEWAY"}}).credential_envs()
    launcher = [sys.executable, "-c", dump]
    trainer = LocalLoraTrainer(config(launcher=launcher), env=env, key_envs=key_envs)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(2))
    ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=tmp_path / "a")
    seen = Path(ref.job_dir or "") / "job.json.env"
    deadline = time.monotonic() + 30
    child: dict[str, str] | None = None
    while child is None and time.monotonic() < deadline:
        try:
            child = json.loads(seen.read_text())
        except (OSError, ValueError):  # not written yet, or half written
            time.sleep(0.05)
    assert child is not None, "the launcher never ran"
    assert "PATH" in child and child["PYTHONUNBUFFERED"] == "1"
    leaked = [v for v in child.values() if "fake" in v]
    assert leaked == [], leaked
    trainer.cancel(ref)


def test_cancel_stops_the_process_and_it_stays_cancelled(tiny: Path, tmp_path: Path) -> None:
    trainer = LocalLoraTrainer(config(), cancel_grace_s=5.0)
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=tmp_path / "a")
    pid = read_json(Path(ref.job_dir or "") / "process.json", LoraProcess).pid
    ref = trainer.cancel(ref)
    assert ref.status == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert trainer.poll(ref).status == "cancelled"  # not restarted as a dead process
    assert read_json(Path(ref.job_dir or "") / "job.json", LoraJobSpec).job_id == ref.job_id


def test_non_local_policies_are_refused(tiny: Path, train_file: Path, tmp_path: Path) -> None:
    trainer = LocalLoraTrainer(config())
    with pytest.raises(TrainingError, match="not one"):
        trainer.submit(
            train_file, base_policy="openai/gpt-4o-mini", iteration=0, out_dir=tmp_path / "a"
        )


def test_merged_model_matches_the_adapter(tiny: Path, reference: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rmft_api.trainers.lora import merge_adapter

    merged_dir = merge_adapter(tiny, reference, tmp_path / "merged")
    ids = torch.tensor([[1, 85, 91, 282, 71, 79, 201, 303]])
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny), str(reference)
        ).eval()
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        base = AutoModelForCausalLM.from_pretrained(tiny).eval()
        a, b, c = (m(input_ids=ids).logits for m in (peft_model, merged, base))
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-2)


@pytest.mark.slow
def test_two_ranks_under_torchrun_match_one_process(tiny: Path, tmp_path: Path) -> None:
    """The entry point under a distributed launcher (2 CPU ranks, gloo): each rank takes half of
    every step, so 2 ranks × batch 1 train exactly what 1 process × batch 2 does. An odd number
    of examples leaves one rank without data in the last step (it must still join the
    all-reduce)."""
    import shutil
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(15))
    adapters = {}
    for name, launcher, batch in [
        ("single", [], 2),
        ("ranks", [torchrun, "--standalone", "--nproc_per_node", "2"], 1),
    ]:
        trainer = LocalLoraTrainer(
            config(launcher=launcher, batch_size=batch, grad_accum=1, epochs=2, lora_dropout=0)
        )
        out = tmp_path / name
        ref = trainer.submit(train, base_policy=f"hf/{tiny}", iteration=0, out_dir=out)
        assert wait_terminal(trainer, ref, timeout_s=120).status == "succeeded"
        adapters[name] = adapter_tensors(out)
    for key, tensor in adapters["single"].items():
        assert torch.allclose(adapters["ranks"][key], tensor, atol=1e-4), key
