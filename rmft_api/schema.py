"""Versioned records written to disk and passed between modules.

Every record that lands in a run directory carries `schema_version`; readers refuse versions they
do not know rather than guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]


class Record(BaseModel):
    """Base for on-disk records: unknown keys are rejected, so a corrupt line is caught."""

    model_config = ConfigDict(extra="forbid")


class Message(Record):
    role: Role
    content: str
    # OpenAI fine-tuning per-message weight: 0 = context only, 1 = trained on. Assistant turns only.
    weight: Literal[0, 1] | None = None


class Usage(Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class Completion(Record):
    """One model reply (or the error that replaced it after retries)."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | ... ; "length" counts as truncated
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None  # set when the request failed for good; ends that episode
    cached: bool = False  # replayed from the response cache, not paid for again


ParseStatus = Literal[
    "ok",  # parsed on the first reply
    "reprompted",  # parsed after one or more format reminders
    "fallback_random",  # never parsed: a random action was substituted (tagged, not the model's)
    "fallback_repeat",  # never parsed: the previous action was repeated
    "forfeit",  # never parsed: zero reward this round
]


class Attempt(Record):
    """One reply to one round's prompt, including replies that failed to parse."""

    reply: str
    parse_error: str | None = None  # why it was rejected; None when it parsed
    # The parser's kind of rejection (envs/parsing.FailureCategory): no_marker, not_a_name, ...
    parse_category: str | None = None
    truncated: bool = False  # the reply hit max_tokens (finish_reason "length")
    # The format-reminder user turn that re-asked after this reply (None: parsed, or last try).
    reminder: str | None = None


class Step(Record):
    """One round of an episode, scored only from the hidden truth."""

    t: int
    prompt: str  # the user message of this round (feedback of the last round + question)
    attempts: list[Attempt]
    action: int | None = None  # bandits: the arm played (None only when forfeited)
    policy: list[float] | None = None  # distribution answers: the normalised vector played
    status: ParseStatus = "ok"
    ambiguous: bool = False  # the parser found conflicting answers and took the last one
    lenient: bool = False  # parse.answer_line = unique_name took a line that was not one name
    reward: float = 0.0  # realised reward (bandit: table draw of the arm; FOL: <policy, r_t>)
    reward_vector: list[float] | None = None  # FOL: the whole vector revealed this round
    expected_reward: float = 0.0  # hidden expected reward of what was played
    best_expected_reward: float = 0.0  # max_a of the hidden expectation at this round
    feedback: str = ""  # the text shown to the model about this round's outcome

    @property
    def valid(self) -> bool:
        return self.status in ("ok", "reprompted")


EpisodeStatus = Literal["complete", "error", "aborted"]


class Episode(Record):
    """A whole multi-round interaction with its ids, scores and cost."""

    schema_version: int = SCHEMA_VERSION
    episode_id: str
    iteration: int = 0
    scenario_id: str
    scenario_index: int
    rollout: int = 0
    seed: int
    split: Literal["train", "heldout"] = "train"
    env: Literal["mab", "fol", "ns"]
    num_arms: int
    horizon: int
    context: str  # natural-language scenario name, e.g. "clinical_trial"
    arm_names: list[str]
    policy_spec: str
    template_hash: str
    # multi_turn: one growing chat; single_turn: each round [system, Step.prompt] (envs/text.py).
    transcript: Literal["multi_turn", "single_turn"] = "multi_turn"
    system_prompt: str
    steps: list[Step]
    status: EpisodeStatus = "complete"
    error: str | None = None
    regret: float  # expected (pseudo-/static/dynamic) cumulative regret from the hidden truth
    realised_regret: float
    usage: Usage = Field(default_factory=Usage)


# ---------------------------------------------------------------- fine-tuning jobs

# OpenAI's job statuses, shared by every trainer backend. A status outside this list (e.g. a new
# server-side "paused") is kept verbatim in `JobRef.status` and treated as not finished yet.
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobProgress(Record):
    """Training progress as last reported by the backend (for the progress display)."""

    step: int = 0
    total_steps: int | None = None
    loss: float | None = None  # mean training loss over the trained tokens of the last step
    tokens_per_s: float | None = None


class JobRef(Record):
    """A fine-tuning job of any backend; persisted (iter-NNN/job.json) before it is ever polled."""

    schema_version: int = SCHEMA_VERSION
    backend: Literal["openai", "lora", "azure", "together"]
    job_id: str
    status: str = "queued"  # a JobStatus, or an unknown server status kept verbatim
    iteration: int
    base_policy: str  # provider spec trained from, e.g. "hf/models/tiny" or "openai/gpt-4o-mini"
    train_file: str
    train_file_sha256: str | None = None
    file_id: str | None = None  # OpenAI: the uploaded training file
    job_dir: str | None = None  # local backends: the job's working directory
    out_dir: str | None = None  # local backends: where the final adapter is saved
    result_policy: str | None = None  # on success: the next provider spec
    error: str | None = None  # on failure: the backend's message
    progress: JobProgress = Field(default_factory=JobProgress)
    trained_tokens: int | None = None  # tokens trained on (billed, for OpenAI)
    checkpoints: list[str] = Field(default_factory=list)  # OpenAI checkpoint models / local dirs
    metadata: dict[str, str] = Field(default_factory=dict)  # e.g. run id, iteration, data sha
    created_at: float | None = None  # unix seconds
