"""The strict answer parser: the last `ANSWER:` marker, exact names, ambiguity flagged.

Answer format (prompts/templates/answer_*.txt tell the model the same):

- action: a final line `ANSWER: <name>`, where the rest of that line, once wrapping markdown,
  quotes, brackets and trailing punctuation are trimmed, must equal one arm name
  (case-insensitive). A marker with nothing after it on its line takes the next non-empty line.
- distribution: `ANSWER: {"<name>": <probability>, ...}` (keys quoted or not; may span lines).
  Names must be arm names (case-insensitive, no duplicates); omitted arms get 0; values are plain
  non-negative decimal numbers (no NaN, inf, %, fractions); the sum must lie within `tolerance`
  of 1 and the vector is then normalised.

Only the LAST marker counts. The reasoning before it is never searched for names, so an arm named
in passing can never be taken as the answer. Outcomes beyond plain ok / rejected:

- rejected: several names on the answer line, several `{...}` after the last marker, or any
  malformed entry: nothing is guessed.
- ok but `ambiguous`: an earlier marker gave a different valid answer, or text after the answer
  line names a different arm (action) — the last answer is taken and the flag is set so that
  selection and export can exclude or down-weight the step.

Lenient answer line (`parse.answer_line = "unique_name"`, action answers only): when the rest of
the answer line is not exactly a name but names exactly one arm as a whole word (`The correct
answer is: Coral`), that arm is taken and the result is flagged `lenient`. Still only the answer
line is read: a name in the reasoning before the marker never counts, and two names on the line
are still rejected.

Every rejection carries a `category` (`FailureCategory`) so that failures of real prose can be
counted by kind. Error messages are short: they are shown to the model inside the format reminder.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

AnswerLine = Literal["exact", "unique_name"]

# Why a reply was rejected: empty reply; no `ANSWER:` marker; nothing after it; several names on
# the answer line; a line naming one arm among other words (rejected under answer_line = exact);
# a line naming no arm; a malformed distribution.
FailureCategory = Literal[
    "empty", "no_marker", "nothing_after", "several_names", "not_exact", "not_a_name", "malformed"
]

MARKER = "ANSWER:"
# `answer`, optional markdown emphasis, then a colon: `ANSWER:`, `**Answer:**`, `**ANSWER**:`,
# `Final answer:`. `\b` keeps `answered:` out. Linear-time: no nested quantifiers.
_MARKER_RE = re.compile(r"\banswer\b[ \t*_]*:", re.IGNORECASE)
_WRAPPING = " \t\r\n*_`\"'<>[](){}\u201c\u201d\u2018\u2019"
_TRAILING = ".,;:!?"
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FENCE_RE = re.compile(r"^(?:```|~~~)[A-Za-z]*")
# The shown part of an unknown candidate is capped so a huge reply cannot blow up a reminder.
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class ParseResult(Generic[T]):
    """The outcome of parsing one reply: `value` is set exactly when `ok`."""

    ok: bool
    value: T | None = None
    error: str | None = None
    ambiguous: bool = False
    lenient: bool = False  # accepted by answer_line = unique_name, not by an exact name
    category: FailureCategory | None = None  # set exactly when not `ok`


def _reject(error: str, category: FailureCategory = "malformed") -> ParseResult[T]:
    return ParseResult(ok=False, error=error, category=category)


def _trim(text: str) -> str:
    """Strip wrapping markdown, quotes, brackets and trailing punctuation until stable."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip(_WRAPPING).rstrip(_TRAILING)
    return text


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


@functools.lru_cache(maxsize=256)
def _name_patterns(arm_names: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """Whole-word, case-insensitive patterns for each name (any whitespace between its words)."""
    pats = []
    for name in arm_names:
        body = r"\s+".join(re.escape(word) for word in name.split())
        pats.append(re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE))
    return tuple(pats)


def _names_in(text: str, arm_names: tuple[str, ...]) -> set[int]:
    return {i for i, pat in enumerate(_name_patterns(arm_names)) if pat.search(text)}


def _lookup(arm_names: Sequence[str]) -> dict[str, int]:
    return {" ".join(name.split()).casefold(): i for i, name in enumerate(arm_names)}


def _answer_line(segment: str) -> tuple[str, str]:
    """(the answer line, the text after it): the marker's own line, else the next non-empty."""
    lines = segment.split("\n")
    for i, line in enumerate(lines):
        if _trim(line):
            return line, "\n".join(lines[i + 1 :])
    return "", ""


def _read_action(
    segment: str, arm_names: tuple[str, ...], answer_line: AnswerLine
) -> ParseResult[int]:
    line, rest = _answer_line(segment)
    candidate = " ".join(_trim(line).split())
    if not candidate:
        return _reject("nothing after ANSWER:", "nothing_after")
    index = _lookup(arm_names).get(candidate.casefold())
    lenient = False
    if index is None:
        named = _names_in(line, arm_names)
        if len(named) > 1:
            return _reject("several names after ANSWER:, give exactly one", "several_names")
        if not named:
            return _reject(f"'{_shown(candidate)}' is not one of the options", "not_a_name")
        if answer_line == "exact":
            return _reject(f"'{_shown(candidate)}' is not exactly one name", "not_exact")
        (index,), lenient = named, True
    ambiguous = bool(_names_in(rest, arm_names) - {index})
    return ParseResult(ok=True, value=index, ambiguous=ambiguous, lenient=lenient)


def parse_action(
    reply: str, arm_names: Sequence[str], *, answer_line: AnswerLine = "exact"
) -> ParseResult[int]:
    """Parse a one-action reply; `value` is the index of the arm in `arm_names`.

    answer_line: exact = the answer line must be one name; unique_name = a line naming exactly
    one arm (whole word) among other words is accepted too, flagged `lenient`.
    """
    names = tuple(arm_names)
    if not reply.strip():
        return _reject("empty reply", "empty")
    markers = list(_MARKER_RE.finditer(reply))
    if not markers:
        return _reject(f"no line starting with {MARKER}", "no_marker")
    result = _read_action(reply[markers[-1].end() :], names, answer_line)
    if not result.ok or result.ambiguous:
        return result
    for earlier in markers[:-1]:
        other = _read_action(reply[earlier.end() : markers[-1].start()], names, answer_line)
        if other.ok and other.value != result.value:
            return replace(result, ambiguous=True)
    return result


def _braced(segment: str) -> tuple[str | None, str, str | None]:
    """(body inside the first {...}, text after it, error): the object must open the answer."""
    text = segment.lstrip(" \t\r\n*_")
    fence = _FENCE_RE.match(text)
    if fence:
        text = text[fence.end() :].lstrip()
    if not text.startswith("{"):
        return None, "", 'expected {"name": probability, ...} after ANSWER:'
    close = text.find("}")
    if close < 0:
        return None, "", "unclosed { after ANSWER:"
    return text[1:close], text[close + 1 :], None


def _read_distribution(
    segment: str, arm_names: tuple[str, ...], *, tolerance: float
) -> ParseResult[tuple[float, ...]]:
    body, rest, error = _braced(segment)
    if body is None:
        return _reject(error or "malformed answer")
    if "{" in body or "{" in rest:
        return _reject("several {...} after ANSWER:, give exactly one")
    lookup = _lookup(arm_names)
    probs = [0.0] * len(arm_names)
    seen: set[int] = set()
    for item in body.split(","):
        if not item.strip():
            continue  # a trailing comma
        key, sep, raw = item.rpartition(":")
        if not sep:
            return _reject(f"'{_shown(item)}' is not name: probability")
        name = " ".join(_trim(key).split())
        index = lookup.get(name.casefold())
        if index is None:
            return _reject(f"'{_shown(name)}' is not one of the options")
        if index in seen:
            return _reject(f"'{arm_names[index]}' appears twice")
        number = raw.strip().strip("*_`\"'")
        if not _NUMBER_RE.fullmatch(number):
            return _reject(f"'{_shown(number)}' is not a number")
        value = float(number)
        if not math.isfinite(value):
            return _reject(f"'{_shown(number)}' is not a finite number")
        if value < 0:
            return _reject("probabilities must not be negative")
        seen.add(index)
        probs[index] = value
    if not seen:
        return _reject("no probabilities after ANSWER:")
    total = math.fsum(probs)
    # 1e-9 absorbs float rounding: 0.45 + 0.5 is 0.05000000000000004 away from 1.
    if total <= 0 or abs(total - 1.0) > tolerance + 1e-9:
        return _reject(f"probabilities sum to {total:.3g}, not 1")
    return ParseResult(ok=True, value=tuple(p / total for p in probs))


def _differ(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return any(abs(x - y) > 1e-9 for x, y in zip(a, b, strict=True))


def parse_distribution(
    reply: str, arm_names: Sequence[str], *, tolerance: float
) -> ParseResult[tuple[float, ...]]:
    """Parse a probability-vector reply; `value` is normalised and ordered like `arm_names`."""
    names = tuple(arm_names)
    if not reply.strip():
        return _reject("empty reply", "empty")
    markers = list(_MARKER_RE.finditer(reply))
    if not markers:
        return _reject(f"no line starting with {MARKER}", "no_marker")
    result = _read_distribution(reply[markers[-1].end() :], names, tolerance=tolerance)
    if not result.ok or result.value is None:
        return result
    for earlier in markers[:-1]:
        segment = reply[earlier.end() : markers[-1].start()]
        other = _read_distribution(segment, names, tolerance=tolerance)
        if other.ok and other.value is not None and _differ(other.value, result.value):
            return ParseResult(ok=True, value=result.value, ambiguous=True)
    return result
