"""The strict parser on a corpus of hostile replies, each with its expected outcome."""

from __future__ import annotations

import numpy as np
import pytest

from rmft_api.envs.parsing import parse_action, parse_distribution

ARMS = ("Red", "Blue", "Golden Dragon", "Sushi Bar", "Oslo")
RED, BLUE, DRAGON, SUSHI, OSLO = range(5)
LONG_NOISE = "Let me think about Red and Blue and Oslo. " * 25_000  # ~1 MB of reasoning

# (reply, expected index or None for rejected, expected ambiguous flag)
ACTION_CASES: list[tuple[str, int | None, bool]] = [
    ("ANSWER: Red", RED, False),
    ("answer: red", RED, False),
    ("ANSWER: RED", RED, False),
    ("**ANSWER:** Blue", BLUE, False),
    ("**ANSWER: Blue**", BLUE, False),
    ("**Answer**: Blue", BLUE, False),
    ("ANSWER: `Blue`", BLUE, False),
    ('ANSWER: "Golden Dragon"', DRAGON, False),
    ("ANSWER: \u201cGolden Dragon\u201d", DRAGON, False),
    ("ANSWER: golden   dragon", DRAGON, False),
    ("ANSWER: Golden Dragon.", DRAGON, False),
    ("ANSWER: <Sushi Bar>", SUSHI, False),
    ("ANSWER: [Oslo]", OSLO, False),
    ("ANSWER: Oslo!!!", OSLO, False),
    ("ANSWER : Blue", BLUE, False),
    ("### Answer: Sushi Bar", SUSHI, False),
    ("Final Answer: Oslo", OSLO, False),
    ("ANSWER:\nSushi Bar", SUSHI, False),
    ("ANSWER: red\n\n   \n", RED, False),
    ("I think Red is best, Blue is poor.\nANSWER: Blue", BLUE, False),
    ("Je choisis le rouge \U0001f534 \u00e9l\u00e9gant.\nANSWER: Red", RED, False),
    ("ANSWER: Blue\nThanks!", BLUE, False),
    ("ANSWER: Blue\nANSWER: Blue", BLUE, False),
    ("ANSWER: Purple\nANSWER: Red", RED, False),  # an invalid earlier marker is no conflict
    ("- **Choice**: Red\n\n**Answer**: Blue", BLUE, False),
    (LONG_NOISE + "\nANSWER: Oslo", OSLO, False),
    # conflicting answers: the last is taken and flagged
    ("ANSWER: Red\nANSWER: Blue", BLUE, True),
    ("My first answer: Red\nOn reflection, no.\nANSWER: Blue", BLUE, True),
    ("Answer: Red. Answer: Blue.", BLUE, True),
    ("ANSWER: Blue\nActually Red is better.", BLUE, True),
    # rejected
    ("", None, False),
    ("   \n\t", None, False),
    ("Red Red Red. Blue was bad.", None, False),  # names but no marker: never guessed
    ("The answer is Red.", None, False),
    ("answered: Red", None, False),
    ("ANSWER:", None, False),
    ("ANSWER: Purple", None, False),
    ("ANSWER: Red or Blue", None, False),
    ("ANSWER: Red, Blue", None, False),
    ("ANSWER: Red because it paid best", None, False),
    ("ANSWER: the Red button", None, False),
    ("ANSWER: Redd", None, False),
    ("ANSWER: Reddish", None, False),
    ("ANSWER: Re", None, False),
    ("ANSWER: Golden", None, False),  # half of a two-word name
    ("ANSWER: Sushi\nBar", None, False),
    ("ANSWER: Rouge \u2764\ufe0f", None, False),
    ("ANSWER: \uff32\uff45\uff44", None, False),  # full-width letters are not ASCII "Red"
    ("ANSWER: Blue\x00", None, False),
    ('ANSWER: {"Red": 1}', None, False),  # a distribution where one action is asked
    ("ANSWER: NaN", None, False),
    ("Red " * 100_000, None, False),
]


@pytest.mark.parametrize(("reply", "expected", "ambiguous"), ACTION_CASES)
def test_parse_action_corpus(reply: str, expected: int | None, ambiguous: bool) -> None:
    result = parse_action(reply, ARMS)
    assert result.ok is (expected is not None), (reply[:80], result)
    assert result.value == expected
    assert result.ambiguous is ambiguous
    if expected is None:
        assert result.error and len(result.error) < 120  # short: it goes into the reminder
    else:
        assert result.error is None


# answer_line = unique_name: (reply, expected index or None, lenient flag, category when rejected)
LENIENT_CASES: list[tuple[str, int | None, bool, str | None]] = [
    ("ANSWER: The correct answer is: Oslo", OSLO, True, None),
    ("ANSWER: The best button is Golden Dragon.", DRAGON, True, None),
    ("ANSWER: Red because it paid best", RED, True, None),
    ("ANSWER: the red button", RED, True, None),
    ("ANSWER: Blue", BLUE, False, None),  # an exact name is not lenient
    ("ANSWER: Red or Blue", None, False, "several_names"),
    ("ANSWER: The correct answer is: Red, not Blue", None, False, "several_names"),
    # a name only in the reasoning before the marker never counts
    ("Red paid best so far.\nANSWER: the one that paid best", None, False, "not_a_name"),
    ("Red is my pick. The correct answer is Red.", None, False, "no_marker"),
    ("ANSWER: Reddish tones", None, False, "not_a_name"),  # whole words only
    ("ANSWER:", None, False, "nothing_after"),
    ("", None, False, "empty"),
]


@pytest.mark.parametrize(("reply", "expected", "lenient", "category"), LENIENT_CASES)
def test_unique_name_answer_line(
    reply: str, expected: int | None, lenient: bool, category: str | None
) -> None:
    result = parse_action(reply, ARMS, answer_line="unique_name")
    assert result.value == expected and result.ok is (expected is not None)
    assert result.lenient is lenient
    assert result.category == category


def test_exact_answer_line_rejects_a_sentence_naming_one_arm() -> None:
    result = parse_action("ANSWER: The correct answer is: Oslo", ARMS)
    assert not result.ok and result.category == "not_exact" and not result.lenient


def test_lenient_answer_still_flags_a_conflicting_earlier_answer() -> None:
    result = parse_action("ANSWER: Red\nANSWER: I pick Blue", ARMS, answer_line="unique_name")
    assert result.value == BLUE and result.lenient and result.ambiguous


def test_action_corpus_is_large_enough() -> None:
    assert len(ACTION_CASES) >= 40
    assert sum(v is None for _, v, _ in ACTION_CASES) >= 15


DIST_ARMS = ("Red", "Blue", "Green Tea")
Vec = tuple[float, float, float]

DIST_CASES: list[tuple[str, Vec | None, bool]] = [
    ('ANSWER: {"Red": 0.5, "Blue": 0.3, "Green Tea": 0.2}', (0.5, 0.3, 0.2), False),
    ('ANSWER: {"red": 0.5, "BLUE": 0.5}', (0.5, 0.5, 0.0), False),  # missing = 0
    ("ANSWER: {Red: 0.5, Blue: 0.5}", (0.5, 0.5, 0.0), False),
    ("ANSWER: {'Red': 1}", (1.0, 0.0, 0.0), False),
    (
        'ANSWER:\n{\n  "Red": 0.25,\n  "Blue": 0.25,\n  "Green Tea": 0.5\n}',
        (0.25, 0.25, 0.5),
        False,
    ),
    ('ANSWER:\n```json\n{"Red": 1.0}\n```', (1.0, 0.0, 0.0), False),
    ('**ANSWER:** {"Blue": 1}', (0.0, 1.0, 0.0), False),
    ('ANSWER: {"Red": 0.33, "Blue": 0.33, "Green Tea": 0.33}', (1 / 3, 1 / 3, 1 / 3), False),
    ('ANSWER: {"Red": 5e-1, "Blue": .5}', (0.5, 0.5, 0.0), False),
    ('ANSWER: {"Red": 0.5, "Blue": 0.5,}', (0.5, 0.5, 0.0), False),
    ('ANSWER: {"Red": "0.5", "Blue": **0.5**}', (0.5, 0.5, 0.0), False),
    ('ANSWER: {"Red": 0.5, "Blue": 0.5} is my final split.', (0.5, 0.5, 0.0), False),
    ('I could play {"Red": 1}.\nANSWER: {"Blue": 1}', (0.0, 1.0, 0.0), False),
    ('ANSWER: {"Red": 1}\nANSWER: {"Red": 1.0}', (1.0, 0.0, 0.0), False),
    (LONG_NOISE + '\nANSWER: {"Green Tea": 1}', (0.0, 0.0, 1.0), False),
    ('ANSWER: {"Red": 1}\nANSWER: {"Blue": 1}', (0.0, 1.0, 0.0), True),
    # rejected
    ("", None, False),
    ('{"Red": 1}', None, False),  # no marker
    ("ANSWER: Red", None, False),
    ('ANSWER: {"Red": 0.5, "Blue": 0.4}', None, False),  # sums to 0.9
    ('ANSWER: {"Red": 1.0, "Blue": 0.5}', None, False),  # sums to 1.5
    ('ANSWER: {"Red": -0.5, "Blue": 1.5}', None, False),
    ('ANSWER: {"Red": NaN, "Blue": 1}', None, False),
    ('ANSWER: {"Red": inf}', None, False),
    ('ANSWER: {"Red": 50%, "Blue": 50%}', None, False),
    ('ANSWER: {"Red": 1/3, "Blue": 2/3}', None, False),
    ('ANSWER: {"Purple": 1}', None, False),
    ('ANSWER: {"R\u00f8d": 1}', None, False),
    ('ANSWER: {"Red": 0.5, "red": 0.5}', None, False),  # duplicate
    ("ANSWER: {}", None, False),
    ('ANSWER: {"Red": 0, "Blue": 0}', None, False),
    ('ANSWER: {"Red": 1', None, False),  # unclosed
    ('ANSWER: {"Red" 1}', None, False),
    ('ANSWER: {"Red": 1} {"Blue": 1}', None, False),
    ('ANSWER: {"Red": {"x": 1}}', None, False),
    ('ANSWER: {"Green": 1}', None, False),  # part of a name
]


@pytest.mark.parametrize(("reply", "expected", "ambiguous"), DIST_CASES)
def test_parse_distribution_corpus(reply: str, expected: Vec | None, ambiguous: bool) -> None:
    result = parse_distribution(reply, DIST_ARMS, tolerance=0.02)
    assert result.ok is (expected is not None), (reply[:80], result)
    assert result.ambiguous is ambiguous
    if expected is None:
        assert result.value is None and result.error
    else:
        assert result.value is not None
        assert np.allclose(result.value, expected, atol=1e-9)
        assert abs(sum(result.value) - 1.0) < 1e-12


def test_distribution_tolerance_is_the_config_value() -> None:
    reply = 'ANSWER: {"Red": 0.45, "Blue": 0.5}'  # sums to 0.95
    assert not parse_distribution(reply, DIST_ARMS, tolerance=0.02).ok
    assert parse_distribution(reply, DIST_ARMS, tolerance=0.05).ok


def test_random_garbage_never_crashes() -> None:
    rng = np.random.default_rng(7)
    alphabet = list("ANSWERanswer:{}[]\"',.*_`\n 0123456789-+eE%RedBlue\u00e9\U0001f600")
    for _ in range(300):
        n = int(rng.integers(0, 120))
        reply = "".join(rng.choice(alphabet, size=n))
        for result in (
            parse_action(reply, ARMS),
            parse_distribution(reply, DIST_ARMS, tolerance=0.02),
        ):
            assert result.ok == (result.value is not None)
            assert result.ok or result.error
