"""The check before a run spends anything: will every model it needs still exist?

OpenAI's `GET /v1/models` carries a per-model `shutdown_date` where one is announced (reported:
gpt-4o-mini-2024-07-18, gpt-4o and gpt-4.1(-mini) snapshots on 2027-01-14, with every fine-tune
built on them). A run needs its OpenAI models — the policy's, the trainer's, and the root base of
every `ft:` model — until its remaining iterations and final evaluation are done: today +
`preflight.days_per_iteration` × remaining iterations + `preflight.margin_days`. A model whose
shutdown falls before that refuses the run (`TrainingUnavailableError`, naming the date and the
alternatives); nothing paid has been sent by then. The list is free to read; a server without it
(vLLM, some proxies) is noted, not refused. `rmft-api doctor CONFIG` runs the same check alone.

"Today" is an argument (an injectable clock), so tests and `doctor --today` are deterministic.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict

from rmft_api.config import AzureTrainerConfig, Config, OpenAITrainerConfig
from rmft_api.credentials import scrub_url
from rmft_api.errors import ConfigError, ProviderError, RmftError, TrainingUnavailableError

log = logging.getLogger(__name__)

# Reported by public sources, not verifiable offline; shown by `doctor` for api.openai.com.
REPORTED_OPENAI_DATES: dict[str, str] = {
    "2027-01-06": "OpenAI refuses new fine-tuning jobs (403 training_not_available)",
    "2027-01-14": "gpt-4o-mini-2024-07-18, gpt-4o and gpt-4.1(-mini) snapshots shut down, "
    "with every fine-tune built on them",
}

# Reads a server's model list: {model id: shutdown_date or None}. Raises RmftError.
ModelLister = Callable[[str], Mapping[str, str | None]]


class ModelCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str  # as the run names it (may be an ft: model)
    listed_as: str | None  # the entry whose date applies (the ft: model's root base); None: none
    base_url: str
    shutdown_date: dt.date | None
    needed_until: dt.date

    @property
    def ok(self) -> bool:
        return self.shutdown_date is None or self.shutdown_date > self.needed_until


class PreflightReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    today: dt.date
    needed_until: dt.date
    iterations_left: int
    checks: list[ModelCheck]
    notes: list[str]
    problems: list[str] = []  # settings a hosted backend needs and lacks (keys, endpoints)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)

    def refusal(self) -> str:
        if self.problems:
            return "not ready to start: " + "; ".join(self.problems)
        bad = [c for c in self.checks if not c.ok]
        parts = [
            f"{c.model} shuts down on {c.shutdown_date} (shutdown_date of "
            f"{c.listed_as} at {c.base_url}/models)"
            for c in bad
        ]
        from rmft_api.trainers.openai_ft_api import ALTERNATIVES

        return (
            f"refused before spending anything: {'; '.join(parts)}, but this run's "
            f"{self.iterations_left} remaining iteration(s) and final evaluation need it until "
            f"about {self.needed_until} (today {self.today} + preflight.days_per_iteration × "
            f"iterations + preflight.margin_days). {ALTERNATIVES}"
        )


def hosted_problems(cfg: Config, policy: str) -> list[str]:
    """What the hosted backends of this run lack (endpoint, ids, secrets in the environment),
    found before the first paid request rather than at the first training job."""
    import os

    from rmft_api.config import TogetherTrainerConfig

    problems: list[str] = []
    azure = cfg.azure
    uses_azure = policy.startswith("azure/") or isinstance(cfg.trainer, AzureTrainerConfig)
    if uses_azure:
        if not azure.endpoint:
            problems.append("azure.endpoint is not set (https://<resource>.openai.azure.com)")
        env = azure.credential_env
        if not os.environ.get(env, "").strip():
            problems.append(f"{env} is not set (azure.auth = {azure.auth!r})")
    if isinstance(cfg.trainer, AzureTrainerConfig):
        for key in ("subscription_id", "resource_group", "account"):
            if not getattr(azure, key):
                problems.append(f"azure.{key} is not set (the deployment step needs it)")
        if not os.environ.get(azure.management_token_env, "").strip():
            problems.append(
                f"{azure.management_token_env} is not set (an Entra token for "
                "https://management.azure.com, to deploy each fine-tuned model)"
            )
    trainer = cfg.trainer
    if isinstance(trainer, TogetherTrainerConfig) and not os.environ.get(trainer.api_key_env):
        problems.append(f"{trainer.api_key_env} is not set (the Together API key)")
    return problems


def needed_models(cfg: Config, policy: str) -> dict[str, list[str]]:
    """The OpenAI models a run from `policy` on needs, by base_url ("" = api.openai.com)."""
    from rmft_api.trainers.openai_ft_api import OPENAI_BASE_URL

    out: dict[str, list[str]] = {}

    def need(url: str | None, model: str) -> None:
        names = out.setdefault((url or OPENAI_BASE_URL).rstrip("/"), [])
        if model and model not in names:
            names.append(model)

    backend, _, model = policy.partition("/")
    if backend == "openai":
        # Replicas serve the same models: the first one answers for all (as registry.py orders).
        urls = [u for u in (cfg.policy.base_url, *cfg.policy.base_urls) if u]
        need(urls[0] if urls else None, model)
    trainer = cfg.trainer
    if isinstance(trainer, OpenAITrainerConfig) and not isinstance(trainer, AzureTrainerConfig):
        url = trainer.base_url or cfg.policy.base_url
        if backend != "openai" and trainer.model is not None:
            need(url, trainer.model)
        elif backend == "openai":
            need(url, model)
    return out


def root_base(model: str) -> str:
    """`ft:<base>:<org>:<suffix>:<id>` → `<base>`; a checkpoint `...:ckpt-step-N` likewise."""
    return model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model


def parse_shutdown(value: object) -> dt.date | None:
    """A `shutdown_date` as sent: "YYYY-MM-DD", an ISO datetime, or unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC).date()
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        log.warning("unreadable shutdown_date %r; ignored", value)
        return None


def run_preflight(
    cfg: Config,
    *,
    policy: str,
    iterations_left: int,
    today: dt.date,
    list_models: ModelLister | None = None,
) -> PreflightReport:
    """Check every OpenAI model the rest of the run needs against its server's shutdown dates."""
    p = cfg.preflight
    days = p.days_per_iteration * max(0, iterations_left) + p.margin_days
    needed_until = today + dt.timedelta(days=days)
    lister = list_models or _sdk_lister(cfg)
    checks: list[ModelCheck] = []
    notes: list[str] = []
    for url, models in needed_models(cfg, policy).items():
        shown = scrub_url(url)  # reports and notes never carry a user:key@ or ?api-key=
        try:
            listed = lister(url)
        except RmftError as e:
            notes.append(f"{shown}: could not read the model list ({e}); shutdown dates unchecked")
            continue
        for model in models:
            entry = model if model in listed else root_base(model)
            found = entry if entry in listed else None
            date = parse_shutdown(listed.get(entry)) if found else None
            if found is None:
                notes.append(f"{model}: not listed by {shown}/models; no shutdown date known")
            checks.append(
                ModelCheck(
                    model=model,
                    listed_as=found,
                    base_url=shown,
                    shutdown_date=date,
                    needed_until=needed_until,
                )
            )
    return PreflightReport(
        today=today,
        needed_until=needed_until,
        iterations_left=iterations_left,
        checks=checks,
        notes=notes,
        problems=hosted_problems(cfg, policy),
    )


def check_preflight(
    cfg: Config,
    *,
    policy: str,
    iterations_left: int,
    today: dt.date,
    list_models: ModelLister | None = None,
) -> PreflightReport:
    """`run_preflight`, raising TrainingUnavailableError when a model shuts down too soon."""
    report = run_preflight(
        cfg, policy=policy, iterations_left=iterations_left, today=today, list_models=list_models
    )
    if report.problems:
        raise ConfigError("not ready to start: " + "; ".join(report.problems))
    if not report.ok:
        raise TrainingUnavailableError(report.refusal())
    return report


def doctor(
    cfg: Config, *, today: dt.date, list_models: ModelLister | None = None
) -> PreflightReport:
    """The preflight of a new run of `cfg` (all iterations ahead), without starting it."""
    return run_preflight(
        cfg,
        policy=cfg.policy.spec,
        iterations_left=cfg.iterations.count,
        today=today,
        list_models=list_models,
    )


def _sdk_lister(cfg: Config) -> ModelLister:
    """`GET /v1/models` through the `openai` SDK, the key from the trainer's (or policy's) env."""

    def list_models(url: str) -> dict[str, str | None]:
        import openai

        from rmft_api.trainers.openai_ft_api import read_api_key

        env = "OPENAI_API_KEY"
        if isinstance(cfg.trainer, OpenAITrainerConfig):
            env = cfg.trainer.api_key_env
        key = read_api_key(env, url)
        client = openai.OpenAI(api_key=key, base_url=url, max_retries=2, timeout=30.0)
        try:
            return {m.id: m.shutdown_date for m in client.models.list()}
        except (openai.OpenAIError, ValueError, TypeError, AttributeError) as e:
            # A list in another shape (Together's is a bare array) fails in the SDK's parser.
            text = str(e).replace(key, "***") if len(key) >= 4 else str(e)
            raise ProviderError(f"{type(e).__name__}: {text}"[:300]) from e
        finally:
            client.close()

    return list_models
