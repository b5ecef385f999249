"""The CLI's cheap promises: --help works and never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rmft_api.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'openai') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "rmft-api" in out.stdout or "Usage" in out.stdout
