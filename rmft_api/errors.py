"""The error tree: only these cross module boundaries; the CLI turns them into one-line messages."""

from __future__ import annotations


class RmftError(Exception):
    """Base of every error rmft-api raises on purpose. Its message is shown to the user as is."""

    exit_code = 1


class ConfigError(RmftError):
    """A configuration or usage mistake: names the key, the bad value and what is allowed."""

    exit_code = 2


class ProviderError(RmftError):
    """A model provider failed."""


class TransientProviderError(ProviderError):
    """Worth retrying: rate limit, 5xx, timeout, dropped connection, malformed body."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalProviderError(ProviderError):
    """Never succeeds on retry: bad key, unknown model, permission denied. Stops the run."""


class QuotaExhaustedError(FatalProviderError):
    """429 insufficient_quota: out of credit. Stops the run; finished work is kept."""


class DailyLimitError(FatalProviderError):
    """429 from a daily limit (a reset hours away): waiting in-process is pointless. Stops the
    run cleanly; finished work is kept and a resume after the reset continues it."""


class RequestTooLargeError(ProviderError):
    """The request alone exceeds a token limit; fails that request only."""


class ParseAbortError(RmftError):
    """A reply could not be parsed and the configured policy is `abort`."""


class TrainingError(RmftError):
    """A fine-tuning job or local training run failed, was cancelled or was refused."""


class StopRequested(RmftError):
    """`rmft-api cancel` asked the running process to stop (stop.json); it stopped before its
    next paid request or poll."""


class StateError(RmftError):
    """The run directory is inconsistent, locked by another process, or from another config."""


class EvaluationError(RmftError):
    """An evaluation with no completed episode (every one ended in an error): not a result."""


class BudgetError(RmftError):
    """The next paid step would exceed `budget.max_usd`."""


class TrainingUnavailableError(TrainingError):
    """The service will not train (403, `training_not_available`, a model past its shutdown):
    final, never retried; the message names the alternatives."""
