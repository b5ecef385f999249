"""`rmft-api validate`: every defect of the malformed corpus is reported with its line and rule."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rmft_api.cli import app
from rmft_api.costs import auto_epochs, check_budget, estimate_costs
from rmft_api.errors import BudgetError, ConfigError
from rmft_api.tokens import (
    EstimateCounter,
    count_chat_tokens,
    make_token_counter,
    tiktoken_cache_file,
    tiktoken_encoding_name,
)
from rmft_api.validation import RULES, validate_file

CORPUS = Path(__file__).parent / "data" / "malformed"

# file → the exact set of (line, rule) the validator must report (line None = the whole file),
# plus per-file options.
EXPECTED: dict[str, tuple[set[tuple[int | None, str]], dict[str, Any]]] = {
    "bad_json_truncated_line.jsonl": ({(4, "json")}, {}),
    "line_not_object.jsonl": ({(3, "data_type")}, {}),
    "legacy_prompt_completion.jsonl": (
        {(5, "unrecognized_example_key"), (5, "missing_messages_list")},
        {},
    ),
    "empty_messages_list.jsonl": ({(2, "missing_messages_list")}, {}),
    "unrecognized_example_key.jsonl": ({(6, "unrecognized_example_key")}, {}),
    "message_missing_role.jsonl": ({(7, "message_missing_key")}, {}),
    "message_missing_content.jsonl": ({(8, "message_missing_key")}, {}),
    "message_unrecognized_key.jsonl": ({(9, "message_unrecognized_key")}, {}),
    "unrecognized_role.jsonl": ({(10, "unrecognized_role")}, {}),
    "content_not_string.jsonl": ({(3, "missing_content")}, {}),
    "empty_assistant_content.jsonl": ({(11, "missing_content")}, {}),
    "weight_on_user_message.jsonl": ({(4, "weight_role")}, {}),
    "weight_not_zero_or_one.jsonl": ({(2, "weight_value"), (6, "weight_value")}, {}),
    "no_assistant_message.jsonl": ({(12, "missing_assistant_message")}, {}),
    "all_assistant_weights_zero.jsonl": ({(5, "no_trainable_assistant")}, {}),
    "special_token_strings.jsonl": ({(3, "special_token"), (9, "special_token")}, {}),
    "example_too_long.jsonl": ({(7, "too_many_tokens")}, {"max_tokens_per_example": 1000}),
    "duplicate_examples.jsonl": ({(7, "duplicate"), (9, "duplicate")}, {}),
    "too_few_examples.jsonl": ({(None, "too_few_examples")}, {}),
    "invalid_utf8.jsonl": ({(6, "utf8")}, {}),
    "utf8_bom.jsonl": ({(1, "utf8")}, {}),
    "blank_line.jsonl": ({(5, "empty_line")}, {}),
    "multiple_defects.jsonl": (
        {
            (2, "weight_value"),
            (4, "json"),
            (7, "data_type"),
            (10, "weight_role"),
            (10, "missing_assistant_message"),
        },
        {},
    ),
    "good_minimal.jsonl": (set(), {}),
    "good_multi_turn_weights.jsonl": (set(), {}),
}


def test_corpus_is_complete() -> None:
    files = {p.name for p in CORPUS.glob("*.jsonl")}
    assert files == set(EXPECTED)
    malformed = [name for name, (want, _) in EXPECTED.items() if want]
    assert len(malformed) >= 15
    covered = {rule for want, _ in EXPECTED.values() for _, rule in want}
    assert covered | {"file_size"} == set(RULES)  # every rule has a file (file_size: below)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_defect_reported_with_line_and_rule(name: str) -> None:
    want, options = EXPECTED[name]
    report = validate_file(CORPUS / name, **options)
    got = {(p.line, p.rule) for p in report.problems}
    assert got == want, [p.model_dump() for p in report.problems]
    assert report.ok is (not want)
    for p in report.problems:
        assert p.rule in RULES and p.message


def test_messages_name_the_detail() -> None:
    report = validate_file(CORPUS / "duplicate_examples.jsonl")
    messages = {p.line: p.message for p in report.problems}
    assert "line 2" in messages[7] and "line 3" in messages[9]
    report = validate_file(CORPUS / "special_token_strings.jsonl")
    text = " ".join(p.message for p in report.problems)
    assert "<|im_end|>" in text and "<|eot_id|>" in text


def test_file_size_limit() -> None:
    path = CORPUS / "good_minimal.jsonl"
    report = validate_file(path, max_file_bytes=path.stat().st_size - 1)
    assert [(p.line, p.rule) for p in report.problems] == [(None, "file_size")]


def test_report_figures_on_good_file() -> None:
    path = CORPUS / "good_multi_turn_weights.jsonl"
    report = validate_file(path, model="gpt-4o-mini")
    assert report.ok and report.n_examples == 12
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    counter = EstimateCounter()
    lengths = [count_chat_tokens(r["messages"], counter) for r in rows]
    assert report.tokens.method == "estimate:chars/4"  # no tiktoken encodings offline here
    assert report.tokens.total == sum(lengths) and report.tokens.max == max(lengths)
    # Only weight-1 assistant turns are trained on: strictly fewer than all tokens.
    assert 0 < report.tokens.trainable < report.tokens.total
    cost = report.cost
    assert cost is not None and cost.n_epochs == 8 and cost.epochs_rule == "auto"  # 100 // 12
    assert cost.training_usd == pytest.approx(sum(lengths) * 8 * 3.0 / 1e6)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_problem_list_is_capped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("[]\n" * 30)
    report = validate_file(path, max_problems=5)
    assert len(report.problems) == 5 and report.problems_omitted == 26
    assert report.rule_counts == {"data_type": 30, "too_few_examples": 1}


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- tokens


def test_hf_tokenizer_counts_are_labelled_and_exact(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["choose the blue button", "ANSWER : red"],
        trainers.WordLevelTrainer(special_tokens=["[UNK]"]),
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    counter = make_token_counter("hf/tiny", tokenizer_dir=tmp_path)
    assert counter.label == f"hf-tokenizer:{tmp_path}"
    assert counter.count("choose the blue button") == 4
    assert counter.count("ANSWER: red zzz") == 4  # ANSWER, :, red, [UNK]
    # Framing: 3 per message + 3 reply priming, plus every string field (role included).
    msgs = [{"role": "user", "content": "choose the blue button"}]
    assert count_chat_tokens(msgs, counter) == 3 + 3 + counter.count("user") + 4

    path = CORPUS / "good_minimal.jsonl"
    report = validate_file(path, tokenizer_dir=tmp_path)
    assert report.tokens.method.startswith("hf-tokenizer:")
    with pytest.raises(ConfigError, match="not a directory"):
        make_token_counter("x", tokenizer_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        make_token_counter("x", tokenizer_dir=tmp_path / "empty")


def test_tiktoken_only_used_when_encoding_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiktoken_encoding_name("gpt-4o-mini") == "o200k_base"
    assert tiktoken_encoding_name("ft:gpt-4o-mini-2024-07-18:org::abc") == "o200k_base"
    assert tiktoken_encoding_name("gpt-3.5-turbo") == "cl100k_base"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tiktoken_cache_file("o200k_base") is None
    # tiktoken's cache key: sha1 of the encoding URL.
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    name = hashlib.sha1(url.encode()).hexdigest()
    (tmp_path / name).write_text("x")
    assert tiktoken_cache_file("o200k_base") == tmp_path / name
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken_cache_file("o200k_base") is None


# ---------------------------------------------------------------- costs and budget


def test_auto_epochs_rule() -> None:
    assert auto_epochs(10) == 10  # REFERENCE §4: 10 examples train for 10 epochs
    assert auto_epochs(1) == 25 and auto_epochs(3) == 25
    assert auto_epochs(12) == 8 and auto_epochs(33) == 3  # 99 < 100: 100 // 33 = 3
    assert auto_epochs(34) == 3 and auto_epochs(10_000) == 3
    for n in range(1, 200):
        e = auto_epochs(n)
        assert 3 <= e <= 25 and (n * 3 >= 100 or e == min(25, 100 // n))


def test_cost_estimates() -> None:
    c = estimate_costs("gpt-4o-mini", n_examples=100, file_tokens=1_000_000)
    assert c.n_epochs == 3 and c.billed_tokens == 3_000_000
    assert c.training_usd == pytest.approx(9.0) and c.rollout_usd is None
    c = estimate_costs(
        "gpt-4o-mini",
        n_examples=100,
        file_tokens=1_000_000,
        n_epochs=2,
        rollout_tokens=(2_000_000, 500_000),
    )
    # Next rollout on the fine-tuned model: $0.30 / $1.20 per 1M in / out.
    assert c.epochs_rule == "fixed" and c.rollout_model == "ft:gpt-4o-mini"
    assert c.rollout_usd == pytest.approx(0.6 + 0.6)
    assert c.total_usd == pytest.approx(6.0 + 1.2)
    local = estimate_costs("hf/tiny", n_examples=20, file_tokens=5000)
    assert not local.training_priced and local.training_usd == 0.0
    with pytest.raises(ConfigError):
        estimate_costs("gpt-4o-mini", n_examples=1, file_tokens=1, n_epochs=0)
    assert math.isclose(
        estimate_costs("ft:gpt-4o-mini:o::x", n_examples=50, file_tokens=10**6).training_usd, 9.0
    )


def test_check_budget() -> None:
    check_budget(4.0, 5.0, 10.0)
    check_budget(1e9, 0.0, None)
    with pytest.raises(BudgetError, match=r"\$6\.00.*\$11\.00.*max_usd = \$10\.00"):
        check_budget(6.0, 5.0, 10.0)


# ---------------------------------------------------------------- CLI


def test_cli_reports_problems_and_exit_code() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["validate", str(CORPUS / "multiple_defects.jsonl"), "--json"])
    assert bad.exit_code == 1, bad.output
    last = json.loads(bad.output.strip().splitlines()[-1])
    assert {(p["line"], p["rule"]) for p in last["problems"]} == EXPECTED["multiple_defects.jsonl"][
        0
    ]
    assert "weight_value" in bad.output and "estimate:chars/4" in bad.output
    good = runner.invoke(app, ["validate", str(CORPUS / "good_minimal.jsonl")])
    assert good.exit_code == 0, good.output
    assert "OK" in good.output and "10 examples" in good.output
    long = runner.invoke(
        app, ["validate", str(CORPUS / "example_too_long.jsonl"), "--max-tokens", "1000"]
    )
    assert long.exit_code == 1 and "too_many_tokens" in long.output
