"""A local model that speaks the answer format, for tests that need trainable episodes.

Random-init tiny models answer in noise, and a few LoRA epochs do not teach them the format, so
tests that train on a model's own episodes use the embedded default's bootstrap model: built once
per machine into the bootstrap cache (`$RMFT_CACHE`, else ~/.cache/rmft-api), then reused. On a
fresh machine the first test that asks builds it (about 3 minutes on one CPU core).
"""

from __future__ import annotations

from pathlib import Path


def speaking_model() -> Path:
    from rmft_api.bootstrap import bootstrap_model

    return bootstrap_model()
