"""The configuration tree: TOML in, frozen pydantic models out, every field documented here.

Unknown keys are errors (`extra="forbid"`), every error is one line naming the key, the bad value
and what is allowed, and `--set a.b=c` overrides any leaf. Later sections (policy, trainer, ...)
extend `Config`; secrets are never fields: they come from the environment only.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rmft_api.credentials import check_env_name, scrub
from rmft_api.errors import ConfigError
from rmft_api.providers.pricing import ModelPrice
from rmft_api.redact import check_url

# The name of an environment variable holding a credential; a key typed here is refused unseen.
EnvName = Annotated[str, AfterValidator(check_env_name)]

# Selection reads an iteration's episodes into memory: M × L is capped as well as M and L.
MAX_EPISODES_PER_ITERATION = 1_000_000


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _no_credentials_in_urls(self) -> Self:
        # A key inside a URL would be written to run.json, episodes and logs: refused, and the
        # error shows the URL with the credential masked (the section is reported, not the value).
        for name in _URL_FIELDS & set(type(self).model_fields):
            value = getattr(self, name)
            for url in value if isinstance(value, list) else [value]:
                if isinstance(url, str):
                    try:
                        check_url(url)
                    except ValueError as e:
                        raise ValueError(f"{name}: {e}") from None
        return self


_URL_FIELDS = frozenset({"base_url", "base_urls", "endpoint"})


# Named instances of REFERENCE §2 (Krishnamurthy et al. 2024). A preset fills the keys the user
# did not set; explicit keys always win.
ENV_PRESETS: dict[str, dict[str, Any]] = {
    "hard": {"kind": "mab", "num_arms": 5, "gap": 0.2, "horizon": 100, "means_mode": "gap"},
    "easy": {"kind": "mab", "num_arms": 4, "gap": 0.5, "horizon": 100, "means_mode": "gap"},
    "fol-iid": {"kind": "fol", "num_arms": 5, "horizon": 100, "family": "iid_uniform"},
    "fol-adversarial": {"kind": "fol", "num_arms": 5, "horizon": 100, "family": "adaptive"},
    "ns-abrupt": {"kind": "ns", "num_arms": 5, "horizon": 100, "ns_mode": "abrupt"},
    "ns-drift": {"kind": "ns", "num_arms": 5, "horizon": 100, "ns_mode": "drift"},
}

FolFamily = Literal[
    "iid_uniform", "iid_gaussian", "linear_trend", "sine_trend", "alternating", "adaptive"
]


class EnvConfig(Section):
    """The decision task: its numeric core (hidden means / reward process)."""

    preset: str | None = Field(
        default=None, description=f"Named instance filling unset keys: {', '.join(ENV_PRESETS)}."
    )
    kind: Literal["mab", "fol", "ns"] = Field(
        default="mab",
        description="mab: stochastic bandit; fol: experts; ns: non-stationary bandit.",
    )
    num_arms: int = Field(default=5, ge=2, le=26, description="K, the number of actions.")
    horizon: int = Field(default=100, ge=1, le=100_000, description="T, rounds per episode.")
    noise: Literal["bernoulli", "gaussian"] = Field(
        default="bernoulli", description="Bandit reward noise around the hidden means."
    )
    sigma: float = Field(
        default=0.1, gt=0, le=1, description="Std of Gaussian rewards (bandits, iid_gaussian FOL)."
    )
    means_mode: Literal["gap", "uniform", "fixed"] = Field(
        default="gap",
        description="gap: best arm 0.5+gap/2, others 0.5-gap/2; uniform: means ~ U(0,1) per "
        "scenario; fixed: `means` as given. Arm order is shuffled per scenario seed except fixed.",
    )
    gap: float = Field(default=0.2, gt=0, le=1, description="Δ for means_mode = gap.")
    means: list[float] | None = Field(
        default=None, description="Hidden means for means_mode = fixed; one per arm, in [0, 1]."
    )
    family: FolFamily = Field(default="iid_uniform", description="FOL reward sequence family.")
    ns_mode: Literal["abrupt", "drift"] = Field(
        default="abrupt", description="NS-MAB: abrupt switches of the means, or smooth drift."
    )
    num_switches: int = Field(default=3, ge=1, description="NS abrupt: number of change points.")
    drift_periods: float = Field(
        default=1.0,
        gt=0,
        description="NS drift / FOL sine_trend: sine periods of each arm over the horizon.",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in ENV_PRESETS:
                raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(ENV_PRESETS)}")
            data = {**ENV_PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_means(self) -> Self:
        if self.means_mode == "fixed":
            if self.means is None or len(self.means) != self.num_arms:
                raise ValueError(
                    f"means_mode = 'fixed' needs `means` with num_arms = {self.num_arms} values"
                )
            if any(not 0.0 <= m <= 1.0 for m in self.means):
                raise ValueError("every value in `means` must lie in [0, 1]")
        return self


class PromptConfig(Section):
    """How an episode is put into words (Krishnamurthy et al.'s prompt design factors)."""

    contexts: list[str] = Field(
        default_factory=list,
        description="Scenario contexts to draw from (names in prompts/scenarios); empty = all.",
    )
    history: Literal["raw", "summarized", "window"] = Field(
        default="summarized",
        description="raw: every past round; summarized: per-arm count + mean; window: last rounds.",
    )
    window: int = Field(default=10, ge=1, description="Rounds shown when history = window.")
    answer: Literal["auto", "action", "distribution"] = Field(
        default="auto",
        description="auto: one action for bandits, a probability vector for FOL.",
    )
    reasoning: bool = Field(default=True, description="Ask for free-form reasoning before answer.")
    framing: Literal["neutral", "suggestive"] = Field(
        default="neutral", description="suggestive hints that exploring is worthwhile."
    )
    transcript: Literal["multi_turn", "single_turn"] = Field(
        default="multi_turn",
        description="multi_turn: one growing chat per episode; single_turn: each round a fresh "
        "[system, user] prompt carrying the rendered history (short contexts for small models).",
    )
    templates_dir: str | None = Field(
        default=None,
        description="Directory of <name>.txt templates (or a templates/ folder, plus an optional "
        "scenarios/ folder of contexts) replacing the packaged prompts/ files of the same name; "
        "relative to the config file when set in one.",
    )
    reply_prefix: str = Field(
        default="",
        description="Text every reply starts with, sent as an unfinished assistant turn that the "
        "model continues (local hf/ policies; $action_noun and $arm_list are filled in), e.g. "
        "`ANSWER: The best $action_noun is` for a model too weak to write the marker itself. It "
        "is part of the recorded reply, so the parser reads it and training learns it.",
    )

    @model_validator(mode="after")
    def _check_window(self) -> Self:
        # A multi-turn chat already carries every past round; a window would contradict it.
        if self.history == "window" and self.transcript == "multi_turn":
            raise ValueError("history = 'window' needs transcript = 'single_turn'")
        return self


class ParseConfig(Section):
    """What happens when a reply cannot be parsed strictly."""

    max_reprompts: int = Field(
        default=1, ge=0, le=10, description="Re-ask with the format reminder up to n times."
    )
    fallback: Literal["random", "repeat_last", "forfeit", "abort"] = Field(
        default="forfeit",
        description="After the re-prompts: random action | repeat last | zero reward | abort run. "
        "Every affected step is tagged and excluded or masked downstream.",
    )
    distribution_tolerance: float = Field(
        default=0.02, ge=0, le=0.5, description="|sum − 1| allowed before a vector is rejected."
    )
    answer_line: Literal["exact", "unique_name"] = Field(
        default="exact",
        description="Action answers: exact = the ANSWER: line must be one arm name; unique_name = "
        "a line naming exactly one arm among other words (`The correct answer is: Coral`) is "
        "taken too and the step tagged `lenient`. The reasoning before the marker is never read.",
    )


class AgentsConfig(Section):
    """Hyperparameters of the classic agents (baselines and `agent/<name>` providers)."""

    names: list[str] = Field(
        default_factory=list, description="Agents to run in `baselines`; empty = all that apply."
    )
    epsilon: float = Field(default=0.1, ge=0, le=1, description="ε-greedy exploration rate.")
    ucb_c: float = Field(
        default=1.0,
        gt=0,
        description="UCB bonus constant: sqrt(c ln n / n_a) × (1 Bernoulli, 2σ Gaussian); "
        "2 = Auer et al.'s UCB1.",
    )
    ucb_bonus: Literal["log", "constant"] = Field(
        default="log",
        description="log: the UCB1 bonus above; constant: sqrt(c / n_a), Krishnamurthy et al.'s "
        '"UCB with C = 1" baseline (with c = 1), which explores less.',
    )
    seeds_per_scenario: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Agent seeds per scenario: a classic agent compared with a policy plays each "
        "scenario's reward table this many times (its own generator each) and its regret there "
        "is the mean, so one lucky seed cannot decide a comparison.",
    )
    window: int = Field(default=50, ge=1, description="Sliding-window UCB window length.")
    discount: float = Field(default=0.95, gt=0, le=1, description="Discounted Thompson γ.")
    hedge_eta: float | None = Field(
        default=None, gt=0, description="Hedge learning rate; None = sqrt(8 ln K / T)."
    )
    exp3_gamma: float | None = Field(
        default=None, gt=0, le=1, description="EXP3 exploration; None = the textbook tuning."
    )
    ftpl_noise: float | None = Field(
        default=None, gt=0, description="FTPL Gaussian perturbation std; None = sqrt(T / (2 ln K))."
    )


class SamplingConfig(Section):
    """Decoding parameters of the policy (the same meaning for every provider)."""

    temperature: float = Field(default=1.0, ge=0, le=2, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=256, ge=1, description="Cap on generated tokens per reply.")
    seed: int | None = Field(
        default=None, description="Sampling seed; None = derived from run.seed (local models)."
    )
    stop: list[str] = Field(default_factory=list, description="Stop sequences.")


class PolicyConfig(Section):
    """The policy being rolled out: a provider spec string plus the options its backend reads.

    Specs: `openai/<model>` (any OpenAI-compatible server via `base_url`), `hf/<dir-or-name>`
    `[+<adapter-dir>]` (local transformers model, optional PEFT adapter), `agent/<name>` (a classic
    agent answering in text), `scripted/<first|cycle|garbage|random>` (deterministic, for tests).
    Options a backend does not use are ignored by it.
    """

    spec: str = Field(
        default="openai/gpt-4o-mini",
        description="Provider spec: openai/<model> | hf/<dir>[+<adapter>] | agent/<name> | "
        "scripted/<name>.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    base_url: str | None = Field(
        default=None, description="openai: OpenAI-compatible endpoint (vLLM, transformers serve)."
    )
    base_urls: list[str] = Field(
        default_factory=list, description="openai: several replicas, requests spread over them."
    )
    api_key_env: EnvName | None = Field(
        default=None,
        description="openai: environment variable holding the key (e.g. TOGETHER_API_KEY for "
        "Together's endpoint); None = OPENAI_API_KEY. azure/<deployment> reads [azure].",
    )
    concurrency: int = Field(
        default=64, ge=1, le=4096, description="openai: requests in flight at most (≤ 4096)."
    )
    rpm: int | None = Field(default=None, ge=1, description="openai: requests per minute cap.")
    tpm: int | None = Field(default=None, ge=1, description="openai: tokens per minute cap.")
    timeout_s: float = Field(default=60.0, gt=0, description="openai: per-request timeout.")
    max_retries: int = Field(
        default=6, ge=0, description="openai: retries of a transient failure per request."
    )
    batch_size: int = Field(
        default=16, ge=1, description="hf: prompts per generate call (halved on out-of-memory)."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        default="auto", description="hf: accelerator; auto = cuda, then mps, then cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="hf: weights dtype; auto = bfloat16 on cuda, else float32."
    )
    stop_after_answer: bool = Field(
        default=True,
        description="hf: stop generating at the end of the line carrying the answer marker.",
    )
    fast_path: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="hf: the lock-step fast path (prefix KV reuse, filled static cache), built on "
        "transformers internals; auto = only on the transformers releases it was tested with, "
        "else the public generate path (same greedy replies, slower). on / off force it.",
    )


class RolloutConfig(Section):
    """How many episodes a rollout phase plays, and how it resumes."""

    scenarios: int = Field(
        default=32, ge=1, le=100_000, description="M, scenarios per iteration (≤ 100,000)."
    )
    rollouts_per_scenario: int = Field(
        default=4, ge=1, le=1024, description="L, rollouts of the policy per scenario (≤ 1024)."
    )
    cache: bool = Field(
        default=True,
        description="Keep a response cache in the run dir: a restarted episode replays turns "
        "already paid for, free.",
    )

    @model_validator(mode="after")
    def _episodes_per_iteration(self) -> Self:
        episodes = self.scenarios * self.rollouts_per_scenario
        if episodes > MAX_EPISODES_PER_ITERATION:
            raise ValueError(
                f"scenarios × rollouts_per_scenario = {episodes:,} episodes per iteration; at most "
                f"{MAX_EPISODES_PER_ITERATION:,} (selection reads an iteration's episodes into "
                "memory): lower rollout.scenarios or rollout.rollouts_per_scenario"
            )
        return self


class OpenAITrainerConfig(Section):
    """Fine-tuning through the OpenAI API or any OpenAI-compatible fine-tuning service
    (trainers/openai_ft.py): the job's supervised hyperparameters and naming, where it is sent,
    and how it is polled. The API key comes only from the environment (`api_key_env`).
    """

    kind: Literal["openai"] = "openai"
    model: str | None = Field(
        default=None,
        description="Model to fine-tune when the current policy is not openai/<model> (episodes "
        "from a local model or a classic agent); None = the policy's own model.",
    )
    init_from: Literal["previous", "base"] = Field(
        default="previous",
        description="previous: fine-tune the current ft: model again; base: fine-tune the base "
        "model every iteration (STaR / ReST-EM style).",
    )
    accumulate: bool = Field(
        default=False,
        description="Train on all iterations' selected data so far, not this iteration's only.",
    )
    n_epochs: int | Literal["auto"] = Field(
        default="auto",
        description="Epochs over the file (1–50); auto = OpenAI's rule from its size.",
    )
    batch_size: int | Literal["auto"] = Field(
        default="auto", description="Examples per step (1–256); auto = chosen by the service."
    )
    learning_rate_multiplier: float | Literal["auto"] = Field(
        default="auto", description="Multiplier (> 0) of the service's base learning rate."
    )

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier")
    @classmethod
    def _check_hyperparameter(cls, value: Any, info: ValidationInfo) -> Any:
        # Refused here rather than by the service after the upload was paid for.
        low, high = {"n_epochs": (1, 50), "batch_size": (1, 256)}.get(
            info.field_name or "", (0, 100)
        )
        if value == "auto":
            return value
        if info.field_name == "learning_rate_multiplier":
            if not 0 < value <= high:
                raise ValueError(f'must be > 0 and ≤ {high} (or "auto"), got {value}')
        elif not low <= value <= high:
            raise ValueError(f'must be {low}–{high} (or "auto"), got {value}')
        return value

    suffix: str | None = Field(
        default=None,
        max_length=64,
        description="Up to 64 characters put into the fine-tuned model's name "
        "(ft:...:<suffix>:id).",
    )
    base_url: str | None = Field(
        default=None,
        description="Fine-tuning endpoint (any OpenAI-compatible service); None = policy.base_url, "
        "else api.openai.com.",
    )
    api_key_env: EnvName = Field(
        default="OPENAI_API_KEY", description="Environment variable holding the API key."
    )
    seed: int = Field(
        default=0, ge=0, description="Job seed, mixed with the iteration (reproducible jobs)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        default=6,
        ge=0,
        description="Retries of a transient failure of a read (retrieve, list, events). Creates "
        "are never retried blindly: the object is looked up first.",
    )
    create_attempts: int = Field(
        default=3,
        ge=1,
        description="Sends of an upload or job create the service refused without creating "
        "anything (429, no connection), each after a lookup found nothing. A create with an "
        "unknown outcome (timeout, 5xx) is never sent again in the same process.",
    )
    create_settle_s: float = Field(
        default=120.0,
        gt=0,
        description="After a create with an unknown outcome, how long the object is looked up "
        "(with a growing wait) before the run stops; `--resume` looks it up again.",
    )
    poll_interval_s: float = Field(
        default=10.0, gt=0, description="First wait between the pipeline's polls of the job."
    )
    max_poll_interval_s: float = Field(
        default=120.0, gt=0, description="Cap of the backoff between polls (×1.5 while idle)."
    )
    lookup_window: int = Field(
        default=500,
        ge=1,
        description="Most recent jobs / files scanned when looking for one created before a "
        "timeout or crash (servers ignoring the metadata filter are filtered client-side).",
    )


class LoraTrainerConfig(Section):
    """Local PEFT LoRA training (trainers/lora.py), run as a subprocess writing its status."""

    kind: Literal["lora"] = "lora"
    base_model: str | None = Field(
        default=None,
        description="Local model dir (or hf/<dir> spec) the adapter is trained on; None = the "
        "base of the policy being trained (the <dir> of hf/<dir>[+<adapter>]).",
    )
    init_from: Literal["previous", "base"] = Field(
        default="previous",
        description="previous: continue the current policy's adapter; base: a fresh adapter on "
        "the base model every iteration (STaR / ReST-EM style).",
    )
    accumulate: bool = Field(
        default=False,
        description="Train on all iterations' data so far instead of this iteration's only (the "
        "pipeline concatenates the files; useful with init_from = base).",
    )
    r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scale numerator (scale = α / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on LoRA inputs.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description='Module names to adapt, e.g. ["q_proj", "v_proj"]; all-linear = every '
        "linear layer but the output head.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="linear", description="Decay after warmup: none, linear to 0, or cosine to 0."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup optimizer steps.")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Gradient clipping norm; None = no clipping."
    )
    epochs: int = Field(default=3, ge=1, description="Passes over the training file.")
    batch_size: int = Field(default=4, ge=1, description="Examples per micro-batch (per device).")
    grad_accum: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step (per device)."
    )
    max_seq_len: int = Field(
        default=4096, ge=8, description="Tokens per example; longer ones are cut at the end."
    )
    checkpoint_every_steps: int = Field(
        default=50, ge=1, description="Save adapter + optimizer + RNG state every N steps."
    )
    keep_checkpoints: int = Field(default=2, ge=1, description="Most recent checkpoints kept.")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        default="auto",
        description="auto = cuda, then mps, then cpu; pick GPUs with CUDA_VISIBLE_DEVICES.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Base weights dtype; auto = bfloat16 on cuda, else float32."
    )
    seed: int = Field(
        default=0, ge=0, description="Adapter init, data order and dropout; mixed with iteration."
    )
    cpu_threads: int | None = Field(
        default=None, ge=1, description="torch threads in the training process; None = default."
    )
    launcher: list[str] = Field(
        default_factory=list,
        description='Command put before `-m rmft_api.trainers.lora`, e.g. ["accelerate", '
        '"launch", "--num_processes", "4"]; empty = this Python interpreter.',
    )
    max_restarts: int = Field(
        default=2,
        ge=0,
        description="Times a training process that died without a word is restarted (resuming "
        "from its last checkpoint) before the job is marked failed.",
    )
    stall_timeout_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="A training process whose status has not moved for this long (no step "
        "finished, no phase change) is killed and restarted (counted in max_restarts); "
        "None = wait forever.",
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="First wait between the pipeline's polls of the job."
    )
    max_poll_interval_s: float = Field(
        default=15.0, gt=0, description="Cap of the backoff between polls (×1.5 while idle)."
    )

    # Settings that change how a job is run or watched, not what it computes: changing them
    # between a kill and the resume keeps the job (and its checkpoints).
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset(
        {
            "cpu_threads",
            "max_restarts",
            "stall_timeout_s",
            "poll_interval_s",
            "max_poll_interval_s",
            "checkpoint_every_steps",
            "keep_checkpoints",
        }
    )

    def training_fingerprint(self) -> str:
        """JSON of the settings that determine the trained adapter (all but RUN_ONLY)."""
        return self.model_dump_json(exclude=set(self.RUN_ONLY))


class AzureTrainerConfig(OpenAITrainerConfig):
    """Fine-tuning on Azure OpenAI (trainers/azure_ft.py) with the `openai` SDK's Azure client,
    then a deployment of each fine-tuned model through Azure's control plane, so it can serve
    the next iteration (policy `azure/<deployment>`). Connection and control-plane settings are
    in `[azure]`; the job fields are the OpenAI trainer's.
    """

    kind: Literal["azure"] = "azure"  # type: ignore[assignment]
    model: str | None = Field(
        default=None,
        description="Azure base model fine-tuned from the first policy (e.g. "
        "gpt-4o-mini-2024-07-18); later iterations continue the previous fine-tuned model "
        "(init_from = previous). Required.",
    )
    api_key_env: EnvName = Field(
        default="AZURE_OPENAI_API_KEY",
        description="Unused for Azure: the key or Entra token is read as `[azure]` says.",
    )
    training_type: Literal["standard", "globalstandard", "developer"] = Field(
        default="standard",
        description="The job's `trainingType` (Azure: regional standard, global, or the "
        "cheaper developer tier; reported, check your region).",
    )
    deployment_sku: str = Field(
        default="standard",
        description="SKU of each fine-tuned model's deployment (standard, globalstandard, "
        "developertier).",
    )
    deployment_capacity: int = Field(
        default=1, ge=1, description="Deployment capacity (units of 1,000 tokens per minute)."
    )
    deployment_timeout_s: float = Field(
        default=3600.0, gt=0, description="Longest wait for a deployment to succeed."
    )
    delete_superseded: bool = Field(
        default=False,
        description="Delete an iteration's deployment once the next iteration's model is "
        "deployed (it is no longer played); otherwise `rmft-api deployments RUN --delete`.",
    )
    hosting_usd_per_hour: float = Field(
        default=1.70,
        ge=0,
        description="Hourly cost of one idle fine-tuned deployment, shown when one is created "
        "(reported for gpt-4o-mini standard, unverified; check your price sheet).",
    )

    @model_validator(mode="after")
    def _azure_model(self) -> Self:
        if self.model is None:
            raise ValueError(
                "trainer.kind = 'azure' needs trainer.model, the Azure base model to fine-tune "
                "(e.g. gpt-4o-mini-2024-07-18)"
            )
        if self.base_url is not None:
            raise ValueError("set the Azure endpoint as azure.endpoint, not trainer.base_url")
        return self


class TogetherTrainerConfig(Section):
    """Fine-tuning on Together AI (trainers/together_ft.py) with the `together` SDK: LoRA (or
    full) SFT on OpenAI-style chat JSONL; each result is served by Together's OpenAI-compatible
    chat endpoint as the next policy `openai/<output model>` (set policy.base_url to it).
    """

    kind: Literal["together"] = "together"
    model: str | None = Field(
        default=None,
        description="Together base model to fine-tune; None = the first policy's own model "
        "(openai/<model> served by Together).",
    )
    init_from: Literal["previous", "base"] = Field(
        default="previous",
        description="previous: continue the last job's model (from_checkpoint); base: train the "
        "base model every iteration.",
    )
    accumulate: bool = Field(
        default=False, description="Train on all iterations' selected data so far."
    )
    n_epochs: int = Field(default=1, ge=1, le=100, description="Epochs over the file.")
    batch_size: Annotated[int, Field(ge=1)] | Literal["max"] = Field(
        default="max", description="Examples per step (≥ 1); max = the model's largest."
    )
    learning_rate: float = Field(default=1e-5, gt=0, description="Peak learning rate.")
    lora: bool = Field(default=True, description="LoRA adapters (false = full fine-tuning).")
    lora_r: int | None = Field(default=None, ge=1, description="LoRA rank; None = model default.")
    lora_alpha: int | None = Field(default=None, ge=1, description="LoRA α; None = 2 × rank.")
    suffix: str = Field(
        default="rmft",
        max_length=16,
        pattern=r"^[A-Za-z0-9-]*$",
        description="Start of the job suffix; the rest tags run, iteration and attempt (the "
        "lookup that prevents a duplicate job after a crash).",
    )
    base_url: str = Field(
        default="https://api.together.ai",
        description="Together API root (the SDK adds /v1/...); the chat endpoint is <root>/v1.",
    )
    api_key_env: EnvName = Field(
        default="TOGETHER_API_KEY", description="Environment variable holding the API key."
    )
    seed: int = Field(default=0, ge=0, description="random_seed of the job, mixed with iteration.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=6, ge=0, description="Retries of a transient read.")
    create_attempts: int = Field(
        default=3,
        ge=1,
        description="Sends of an upload or job create the service refused without creating "
        "anything (429, no connection), each after a lookup found nothing.",
    )
    create_settle_s: float = Field(
        default=120.0,
        gt=0,
        description="After a create with an unknown outcome (timeout, 5xx), how long the object "
        "is looked up before the run stops; `--resume` looks it up again.",
    )
    poll_interval_s: float = Field(default=10.0, gt=0, description="First wait between polls.")
    max_poll_interval_s: float = Field(
        default=120.0, gt=0, description="Cap of the backoff between polls."
    )


class AzureConfig(Section):
    """The Azure OpenAI resource behind `azure/<deployment>` policies and the `azure` trainer.

    Data plane: `<endpoint>/openai/...?api-version=...` with the `api-key` header, or an Entra
    ID bearer token. Control plane (deployments): `<management_url>/subscriptions/...` with an
    Entra token for management.azure.com. Secrets come from the environment only.
    """

    endpoint: str | None = Field(
        default=None, description="https://<resource>.openai.azure.com (the data plane)."
    )
    api_version: str = Field(
        default="2025-04-01-preview", description="Data-plane `api-version` query parameter."
    )
    auth: Literal["api_key", "entra"] = Field(
        default="api_key",
        description="api_key: the `api-key` header from api_key_env; entra: a bearer token "
        "from ad_token_env (e.g. `az account get-access-token --resource "
        "https://cognitiveservices.azure.com`).",
    )
    api_key_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding the key; None = AZURE_OPENAI_API_KEY.",
    )
    ad_token_env: EnvName = Field(
        default="AZURE_OPENAI_AD_TOKEN", description="Environment variable holding the token."
    )
    subscription_id: str | None = Field(default=None, description="Control plane: subscription.")
    resource_group: str | None = Field(default=None, description="Control plane: resource group.")
    account: str | None = Field(
        default=None, description="Control plane: the Azure OpenAI resource (account) name."
    )
    management_url: str = Field(
        default="https://management.azure.com", description="Control-plane root."
    )
    management_api_version: str = Field(
        default="2024-10-01", description="Control-plane `api-version` of deployments."
    )

    @property
    def credential_env(self) -> str:
        """The environment variable the data-plane credential is read from."""
        if self.auth == "entra":
            return self.ad_token_env
        return self.api_key_env or "AZURE_OPENAI_API_KEY"

    management_token_env: EnvName = Field(
        default="AZURE_MANAGEMENT_TOKEN",
        description="Environment variable holding an Entra token for the control plane "
        "(`az account get-access-token --resource https://management.azure.com`).",
    )


class PreflightConfig(Section):
    """The check before a run spends anything (preflight.py; `rmft-api doctor CONFIG`)."""

    enabled: bool = Field(
        default=True,
        description="Read the models' shutdown_date from the server's /v1/models and refuse a "
        "run that would need a model past its shutdown.",
    )
    days_per_iteration: float = Field(
        default=1.0,
        ge=0,
        description="Wall-clock days one iteration (rollouts, training job, evaluation) is "
        "planned to take; every model is needed until today + this × remaining iterations "
        "+ margin_days.",
    )
    margin_days: float = Field(
        default=1.0, ge=0, description="Extra days for the final evaluation and the report."
    )


TrainerConfig = Annotated[
    OpenAITrainerConfig | LoraTrainerConfig | AzureTrainerConfig | TogetherTrainerConfig,
    Field(discriminator="kind"),
]


class ExportConfig(Section):
    """How selected episodes become fine-tuning examples, and the limits the file is checked
    against before training (datasets.py, validation.py)."""

    mode: Literal["episode", "round"] = Field(
        default="episode",
        description="episode: one example per episode (whole multi-turn chat); round: one "
        "example per valid round (the chat the model saw then + its reply).",
    )
    mask_ambiguous: bool = Field(
        default=False,
        description="Weight 0 on replies the parser flagged ambiguous (conflicting answers).",
    )
    max_tokens_per_example: int = Field(
        default=65_536, ge=1, description="Per-example token limit (65,536 for gpt-4o-mini)."
    )
    tokenizer_dir: str | None = Field(
        default=None,
        description="Local HF tokenizer dir for exact token counts; None = tiktoken if its "
        "encoding is cached, else an estimate of 4 characters per token.",
    )


class BudgetConfig(Section):
    """Spending limits checked before every paid step."""

    max_usd: float | None = Field(
        default=None,
        ge=0,
        description="Refuse a paid step (fine-tuning job) whose estimate would take the run's "
        "total spending over this; None = no limit.",
    )


class SelectionConfig(Section):
    """Which episodes become training data (selection.py). Only complete episodes compete."""

    k: int = Field(default=2, ge=1, description="Lowest-regret episodes kept per scenario.")
    mode: Literal["per_scenario", "global_quantile"] = Field(
        default="per_scenario",
        description="per_scenario: the k lowest of each scenario's L rollouts (ties by rollout "
        "index); global_quantile: every episode at or below the `quantile` of all eligible "
        "regrets (the ⌈q·n⌉-th smallest), ties at it included.",
    )
    quantile: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="global_quantile: q; at least ⌈q·n⌉ episodes are kept, more when regrets tie "
        "at the threshold.",
    )
    drop_fallback: bool = Field(
        default=True,
        description="Drop episodes with any fallback or forfeit step (actions the model did not "
        "choose would otherwise be trained on).",
    )
    suffix_failure_before: int | None = Field(
        default=None,
        ge=1,
        description="Bandits: drop episodes that never play the best arm from this round on "
        "(a suffix failure starting before round t0); None = off.",
    )
    baseline: Literal["ucb1", "thompson"] | None = Field(
        default=None,
        description="Drop episodes whose regret exceeds this classic agent's on the same draws "
        "(its mean over agents.seeds_per_scenario plays) times `baseline_factor`; None = off.",
    )
    baseline_factor: float = Field(
        default=1.0, gt=0, description="Multiplier of the baseline agent's regret."
    )


class IterationsConfig(Section):
    """The outer loop of Iterative RMFT."""

    count: int = Field(default=3, ge=1, le=1000, description="Fine-tuning iterations N.")
    fresh_scenarios: bool = Field(
        default=True,
        description="Each iteration draws new training scenarios (indices i·M … i·M+M−1); "
        "false = the same M scenarios every iteration.",
    )


class GridVariant(Section):
    """One row of the generalization grid: the run's task with some keys changed, played by every
    iteration's policy on held-out scenarios of its own (seeds disjoint from training and from the
    main held-out set; generalization.py)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Label in reports and the directory iter-NNN/grid/<name>/.",
    )
    env: dict[str, Any] = Field(
        default_factory=dict,
        description="[env] keys changed in this variant, e.g. {num_arms = 10}, "
        '{noise = "gaussian"}, {kind = "ns"}; with `preset` the variant starts from that '
        "preset instead of the run's [env].",
    )
    prompt: dict[str, Any] = Field(
        default_factory=dict,
        description='[prompt] keys changed in this variant, e.g. {framing = "suggestive"}.',
    )
    horizon_factor: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Multiplies the horizon (after `env`): 2 and 5 give the longer-horizon rows.",
    )
    unseen_contexts: bool = Field(
        default=False,
        description="Play only the scenario contexts training never sees: the library minus "
        "prompt.contexts (which must then name the training contexts).",
    )
    scenarios: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Held-out scenarios of this variant (≤ 100,000); None = eval.scenarios.",
    )


def _section_problems(err: ValidationError, model: type[BaseModel], prefix: str) -> str:
    return "; ".join(f"{prefix}: {_describe(dict(e), model)}" for e in err.errors())


def grid_variant_sections(
    env: EnvConfig, prompt: PromptConfig, variant: GridVariant
) -> tuple[EnvConfig, PromptConfig]:
    """The variant's [env] and [prompt]: the run's with the variant's keys replaced, validated.

    Raises ValueError naming the variant and the bad key (a config error at load time).
    """
    where = f"grid variant '{variant.name}'"
    base = {} if "preset" in variant.env else env.model_dump()
    try:
        new_env = EnvConfig.model_validate(base | variant.env)
        if variant.horizon_factor > 1:
            horizon = new_env.horizon * variant.horizon_factor
            new_env = EnvConfig.model_validate(new_env.model_dump() | {"horizon": horizon})
    except ValidationError as e:
        raise ValueError(_section_problems(e, EnvConfig, f"{where} env")) from None
    if variant.unseen_contexts and not prompt.contexts:
        raise ValueError(
            f"{where}: unseen_contexts needs prompt.contexts to name the training contexts "
            "(empty = every context is trained on, none is unseen)"
        )
    if variant.unseen_contexts and "contexts" in variant.prompt:
        raise ValueError(f"{where}: set either unseen_contexts or prompt.contexts, not both")
    try:
        new_prompt = PromptConfig.model_validate(prompt.model_dump() | variant.prompt)
    except ValidationError as e:
        raise ValueError(_section_problems(e, PromptConfig, f"{where} prompt")) from None
    return new_env, new_prompt


def _applicable_baselines(value: EvalConfig, kind: str) -> EvalConfig:
    """eval.baselines checked against env.kind now, not after paid rollouts: a name given that
    cannot play this env is an error; defaults that do not apply (ucb1 under fol) are dropped."""
    from rmft_api.agents.registry import agent_names

    allowed = agent_names(kind)
    if "baselines" not in value.model_fields_set:
        kept = [name for name in value.baselines if name in allowed]
        return value if kept == value.baselines else value.model_copy(update={"baselines": kept})
    wrong = [name for name in value.baselines if name not in allowed]
    if wrong:
        raise ValueError(
            f"eval.baselines: {', '.join(map(repr, wrong))} cannot play env.kind = {kind!r}; "
            f"use names from: {', '.join(allowed)}"
        )
    return value


class EvalConfig(Section):
    """Held-out evaluation of every iteration's policy (evaluate.py)."""

    scenarios: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Held-out scenarios (seeds disjoint from training; ≤ 100,000).",
    )
    rollouts_per_scenario: int = Field(
        default=1, ge=1, le=1024, description="Episodes per scenario (≤ 1024)."
    )
    baselines: list[str] = Field(
        default_factory=lambda: ["ucb1", "thompson", "greedy", "uniform"],
        description="Classic agents run on the same held-out draws.",
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature for evaluation; None = policy's.",
    )
    grid: list[GridVariant] = Field(
        default_factory=list,
        description="Generalization grid ([[eval.grid]] tables): variants of the task each "
        "iteration's policy is also evaluated on; empty = off.",
    )

    @model_validator(mode="after")
    def _unique_grid_names(self) -> Self:
        names = [v.name for v in self.grid]
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"grid variant names must be unique; repeated: {', '.join(doubles)}")
        return self


class RunConfig(Section):
    """Identity and seeding of a run."""

    name: str | None = Field(default=None, description="Run name; default: config name + time.")
    seed: int = Field(default=0, ge=0, description="Root seed; all randomness derives from it.")
    runs_dir: str = Field(default="runs", description="Where run directories are created.")


class Config(Section):
    """The whole configuration tree."""

    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    iterations: IterationsConfig = Field(default_factory=IterationsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig, validate_default=True)
    trainer: TrainerConfig = Field(
        default_factory=OpenAITrainerConfig,
        description='Fine-tuning backend: kind = "openai" | "azure" | "together" | "lora".',
    )
    azure: AzureConfig = Field(default_factory=AzureConfig)
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="USD per 1M tokens by model name, over the built-in table "
        '(providers/pricing.py), e.g. `[prices."my-model"]` with input_per_m, output_per_m '
        "and training_per_m; an Azure deployment is priced by its name, Together models only "
        "from here. A capped run (budget.max_usd) whose models have no price is refused.",
    )
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)

    @field_validator("eval")
    @classmethod
    def _check_grid(cls, value: EvalConfig, info: ValidationInfo) -> EvalConfig:
        # Validate every variant against this run's env/prompt now, not after paid iterations.
        env, prompt = info.data.get("env"), info.data.get("prompt")
        if isinstance(env, EnvConfig) and isinstance(prompt, PromptConfig):
            for variant in value.grid:
                grid_variant_sections(env, prompt, variant)
        if isinstance(env, EnvConfig):
            value = _applicable_baselines(value, env.kind)
        return value

    @model_validator(mode="after")
    def _check_reply_prefix(self) -> Self:
        # Only a local model can be made to continue an open assistant turn; a hosted API or a
        # classic agent would read it as a finished turn and answer after it.
        if self.prompt.reply_prefix and not self.policy.spec.startswith("hf/"):
            raise ValueError(
                f"prompt.reply_prefix needs a local hf/ policy, not {self.policy.spec!r} (only "
                "a local model continues an open assistant turn); remove prompt.reply_prefix"
            )
        return self

    def credential_envs(self) -> set[str]:
        """Every environment variable this config reads a credential from (its `*_env` fields,
        the defaults of those left unset included)."""

        def walk(tree: Any) -> Iterator[str]:
            if isinstance(tree, dict):
                for key, value in tree.items():
                    if key.endswith("_env") and isinstance(value, str):
                        yield value
                    else:
                        yield from walk(value)
            elif isinstance(tree, list):
                for value in tree:
                    yield from walk(value)

        names = set(walk(self.model_dump(mode="json")))
        return names | {"OPENAI_API_KEY", self.azure.credential_env}

    def hash(self) -> str:
        """A stable hash of the resolved config (sha256 of its canonical JSON), 16 hex chars."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading and errors


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not item.startswith(("function-", "model-", "constrained-")):
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "<root>"


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and "[" in x))
    if len(loc) > 2 and loc[0] == "trainer":  # pydantic puts the union's tag in: trainer.lora.r
        loc = (loc[0], *loc[2:])
    key = _format_loc(loc)
    if not loc:  # a check across sections: its message names the keys
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{key}'{hint}"
    got = err.get("input")
    if key.endswith("_env"):  # a key pasted into a variable's name is never echoed
        shown = "a value (not shown)"
    elif isinstance(got, dict):
        shown = "a table"
    else:
        shown = scrub(json.dumps(got, default=str))
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"key '{key}': got {shown}; {msg}"


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    current: Any = model
    for item in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or not isinstance(item, str) or item not in fields:
            return []
        current = fields[item].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def config_error(
    exc: ValidationError, *, source: str, model: type[BaseModel] = Config
) -> ConfigError:
    """One line for the user: every problem with its key, value and what is allowed."""
    problems: list[str] = []
    for e in exc.errors():
        text = _describe(dict(e), model)
        # `int | "auto"` fails once per member under the same key: one problem, both options.
        head, sep, allowed = text.rpartition("; ")
        if sep and problems and problems[-1].startswith(head + "; "):
            problems[-1] += f", or {allowed.removeprefix('Input should be ')}"
        else:
            problems.append(text)
    return ConfigError(f"{source}: " + "; ".join(problems))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], value), the value read as TOML when it parses, else as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set env.horizon=200")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key; expected e.g. env.horizon=200")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is a value, not a table")
        node = child
    node[path[-1]] = value


def load_config(
    path: str | Path | None = None, *, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a TOML file (or defaults when None), apply `--set` overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        from rmft_api.shipped import find_config, shipped_configs

        p = find_config(path)
        source = str(p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            names = ", ".join(shipped_configs()) or "none in this install"
            raise ConfigError(
                f"config file not found: {p} (shipped configs, usable by name: {names})"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text") from e
        prompt = data.get("prompt")
        # A relative templates_dir in a file means next to that file, wherever the run starts.
        templates = prompt.get("templates_dir") if isinstance(prompt, dict) else None
        if isinstance(templates, str) and not Path(templates).expanduser().is_absolute():
            prompt["templates_dir"] = str((p.parent / templates).resolve())  # type: ignore[index]
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(data, keys, value)
    return config_from_dict(data, source=source)


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source=source) from None
