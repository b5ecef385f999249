"""Provider specs → providers. Backends are imported only when their spec is resolved.

Forms (the part before the first `/` picks the backend):

- `openai/<model>`: chat completions from OpenAI or any OpenAI-compatible server (`base_url`).
- `azure/<deployment>`: an Azure OpenAI deployment (`[azure]`: endpoint, api_version, auth).
  `openai/ft:gpt-4o-mini:org::id` works as is (colons belong to the model name).
- `hf/<dir-or-name>[+<adapter-dir>]`: a local transformers model, optionally with a PEFT adapter.
- `agent/<name>`: a classic agent (ucb1, thompson, hedge, ...) answering in text from the chat.
- `scripted/<name>`: deterministic replies for tests: first, cycle, garbage, random.

`resolve("scripted/...")` and `resolve("agent/...")` never import torch, transformers or openai.
"""

from __future__ import annotations

from typing import Any

from rmft_api.config import Config
from rmft_api.errors import ConfigError
from rmft_api.providers.base import Provider, SamplingParams

SPEC_FORMS = (
    "openai/<model>",
    "azure/<deployment>",
    "hf/<dir-or-name>[+<adapter-dir>]",
    "agent/<name>",
    "scripted/<first|cycle|garbage|random>",
)


def _unknown(spec: str, why: str) -> ConfigError:
    return ConfigError(f"provider spec {spec!r}: {why}; expected one of: {', '.join(SPEC_FORMS)}")


def split_spec(spec: str) -> tuple[str, str]:
    """(backend, rest): `hf/models/tiny+adapter` → ("hf", "models/tiny+adapter")."""
    backend, sep, rest = spec.strip().partition("/")
    if not sep or not rest:
        raise _unknown(spec, "no '<backend>/' prefix or nothing after it")
    return backend, rest


def is_local(spec: str) -> bool:
    """True for providers that run in this process (free, batched): hf, agent, scripted."""
    return split_spec(spec)[0] in ("hf", "agent", "scripted")


def resolve(spec: str, **options: Any) -> Provider:
    """Build the provider named by `spec`; each backend reads the options it knows.

    Options: base_url / base_urls, concurrency, rpm, tpm, timeout_s, max_retries, prices (openai);
    batch_size, device, dtype, answer_marker, seed (hf); agents (AgentsConfig), env_kind, sigma,
    seed, templates_dir (agent); seed, templates_dir (scripted). Others are ignored.
    """
    backend, rest = split_spec(spec)
    if backend == "openai":
        return _openai(spec, rest, options)
    if backend == "azure":
        return _azure(spec, rest, options)
    if backend == "hf":
        return _hf(spec, rest, options)
    if backend == "agent":
        from rmft_api.providers.agent import AgentProvider

        return AgentProvider(
            spec,
            name=rest,
            agents=options.get("agents"),
            env_kind=options.get("env_kind"),
            sigma=options.get("sigma"),
            seed=int(options.get("seed") or 0),
            templates_dir=options.get("templates_dir"),
        )
    if backend == "scripted":
        from rmft_api.providers.scripted import ScriptedProvider

        return ScriptedProvider(
            spec,
            name=rest,
            seed=int(options.get("seed") or 0),
            templates_dir=options.get("templates_dir"),
        )
    raise _unknown(spec, f"unknown backend {backend!r}")


def _openai(spec: str, model: str, options: dict[str, Any]) -> Provider:
    from rmft_api.providers.openai import OpenAIProvider

    urls = list(options.get("base_urls") or [])
    if options.get("base_url"):
        urls.insert(0, options["base_url"])
    known = (
        "concurrency",
        "rpm",
        "tpm",
        "timeout_s",
        "max_retries",
        "prices",
        "window_s",
        "api_key_env",
    )
    kwargs = {k: options[k] for k in known if options.get(k) is not None}
    return OpenAIProvider(model, base_url=urls or None, spec=spec, **kwargs)


def _azure(spec: str, deployment: str, options: dict[str, Any]) -> Provider:
    from rmft_api.config import AzureConfig
    from rmft_api.providers.azure import AzureOpenAIProvider

    azure = options.get("azure")
    if not isinstance(azure, AzureConfig):
        raise _unknown(spec, "azure/<deployment> needs the [azure] section (endpoint, auth)")
    known = ("concurrency", "rpm", "tpm", "timeout_s", "max_retries", "prices", "window_s")
    kwargs = {k: options[k] for k in known if options.get(k) is not None}
    return AzureOpenAIProvider(deployment, azure=azure, spec=spec, **kwargs)


def _hf(spec: str, rest: str, options: dict[str, Any]) -> Provider:
    from rmft_api.providers.hf import HFProvider

    model_path, plus, adapter_path = rest.partition("+")
    if not model_path or (plus and not adapter_path):
        raise _unknown(spec, "hf needs a model directory or name, e.g. hf/models/tiny[+adapter]")
    known = ("batch_size", "device", "dtype", "answer_marker", "seed", "fast_path")
    kwargs = {k: options[k] for k in known if options.get(k) is not None}
    return HFProvider(spec, model_path=model_path, adapter_path=adapter_path or None, **kwargs)


def provider_options(cfg: Config) -> dict[str, Any]:
    """The `resolve` options that `[policy]` (and the env / agents sections) imply."""
    from rmft_api.envs.parsing import MARKER

    policy = cfg.policy
    return {
        "base_url": policy.base_url,
        "base_urls": policy.base_urls,
        "api_key_env": policy.api_key_env,
        "concurrency": policy.concurrency,
        "rpm": policy.rpm,
        "tpm": policy.tpm,
        "timeout_s": policy.timeout_s,
        "max_retries": policy.max_retries,
        "batch_size": policy.batch_size,
        "device": policy.device,
        "dtype": policy.dtype,
        "fast_path": policy.fast_path,
        "answer_marker": MARKER if policy.stop_after_answer else None,
        "seed": cfg.run.seed,
        "agents": cfg.agents,
        "azure": cfg.azure,
        "prices": cfg.prices,
        "env_kind": cfg.env.kind,
        "sigma": cfg.env.sigma,
        "templates_dir": cfg.prompt.templates_dir,
    }


def resolve_policy(cfg: Config, *, spec: str | None = None) -> Provider:
    """The provider of `cfg.policy` (or of `spec`, with the same options)."""
    return resolve(spec or cfg.policy.spec, **provider_options(cfg))


def sampling_params(cfg: Config) -> SamplingParams:
    """`[policy.sampling]` as the providers' SamplingParams."""
    s = cfg.policy.sampling
    return SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        seed=s.seed,
        stop=list(s.stop),
    )
