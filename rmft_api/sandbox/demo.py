"""`make sandbox-demo`: the OpenAI path end to end against a sandbox this process starts and stops.

The sandbox is backed by the offline bootstrap model (built and cached on first use), so its base
model speaks the answer format and its fine-tuning jobs train that model for real with LoRA.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rmft_api.errors import RmftError

CONFIG = "sandbox"  # the shipped configs/sandbox.toml (rmft_api.shipped.find_config)
SANDBOX_KEY = "sk-sandbox-demo"  # the sandbox accepts any key; a real one is never needed here


def run_demo(config: str | Path = CONFIG) -> Path:
    """Run the demo; returns the run directory."""
    from rmft_api.bootstrap import bootstrap_model
    from rmft_api.console import RichReporter, pretraining_progress, render_status
    from rmft_api.pipeline import Pipeline
    from rmft_api.providers.registry import resolve
    from rmft_api.run_state import open_run
    from rmft_api.run_status import run_status
    from rmft_api.sandbox.server import SandboxServer
    from rmft_api.sandbox.state import SandboxSettings

    with pretraining_progress() as on_step:
        model = bootstrap_model(on_step=on_step)
    reporter = RichReporter()
    reporter.console.print(f"bootstrap model: {model}")
    settings = SandboxSettings(fine_tuning={"validating_s": 0.2, "queued_s": 0.2})
    with SandboxServer(settings, resolve(f"hf/{model}", seed=0)) as server:
        reporter.console.print(f"sandbox: {server.base_url} (backing hf/{model})")
        os.environ.setdefault("OPENAI_API_KEY", SANDBOX_KEY)
        url = server.base_url
        cfg, run = open_run(config, overrides=[f'policy.base_url="{url}"'])
        reporter.console.print(f"run directory: {run.root}")
        try:
            Pipeline(cfg, run, reporter=reporter).run_to_end()  # polls as [trainer] says
        finally:
            reporter.close()
    render_status(run_status(run))
    print(f"rmft-api status {run.root} --json  # the same figures as JSON")
    return run.root


def main() -> None:
    try:
        run_demo()
    except RmftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
