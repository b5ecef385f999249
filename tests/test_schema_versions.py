"""Every on-disk record takes its schema_version from one constant (schema.SCHEMA_VERSION)."""

from __future__ import annotations

import re
from pathlib import Path

import rmft_api
from rmft_api.evaluate import EvalMetrics
from rmft_api.report import RunReport
from rmft_api.schema import SCHEMA_VERSION
from rmft_api.selection import SelectionReport

PACKAGE = Path(rmft_api.__file__).parent
LITERAL = re.compile(r"^\s*schema_version\s*:\s*int\s*=\s*\d", re.MULTILINE)


def test_no_record_hard_codes_its_schema_version() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if LITERAL.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"use schema.SCHEMA_VERSION in {offenders}"


def test_the_three_reports_share_the_constant() -> None:
    for model in (EvalMetrics, SelectionReport, RunReport):
        assert model.model_fields["schema_version"].default == SCHEMA_VERSION
