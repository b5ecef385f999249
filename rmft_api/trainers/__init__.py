"""Fine-tuning backends behind one protocol (trainers/base.py).

Backends are imported lazily, so importing this package never pulls in torch or openai.
"""

from __future__ import annotations

from rmft_api.trainers.base import JobFailedError, Trainer, is_terminal

__all__ = ["JobFailedError", "Trainer", "is_terminal"]
