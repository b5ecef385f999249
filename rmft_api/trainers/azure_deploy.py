"""Azure OpenAI deployments: a fine-tuned model serves only once deployed, through Azure's
control plane (`PUT/GET/DELETE <management>/subscriptions/<s>/resourceGroups/<g>/providers/
Microsoft.CognitiveServices/accounts/<a>/deployments/<name>?api-version=`, an Entra bearer
token), with a SKU and capacity, `Creating` until `Succeeded` or `Failed`.

No duplicate after a kill: an iteration's deployment has a name fixed by the run and the
iteration (`rmft-<sha256(run)[:8]>-it<NNN>`), and a PUT of a name is create-or-update, so
retrying it (or re-sending it on resume) never makes a second one. Each deployment is recorded
in `<run>/azure/deployments.json` before its PUT, so one can always be found and deleted.

An idle deployment is billed by the hour whether or not it answers anything: its cost
(`trainer.hosting_usd_per_hour`, reported and unverified) is recorded with it and shown when it
is created; `rmft-api deployments RUN --delete` (or `delete_superseded`) removes them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
from pydantic import Field

from rmft_api.config import AzureConfig
from rmft_api.credentials import read_secret, scrub
from rmft_api.errors import (
    ConfigError,
    QuotaExhaustedError,
    RmftError,
    TrainingError,
    TransientProviderError,
)
from rmft_api.providers.retry import RetryPolicy, server_wait_s
from rmft_api.schema import SCHEMA_VERSION, Record
from rmft_api.store import read_json, write_json_atomic

log = logging.getLogger(__name__)

DEPLOYMENTS_FILE = "deployments.json"
SUCCEEDED, FAILED = "Succeeded", "Failed"


def deployment_name(run_id: str, iteration: int) -> str:
    """The deployment of an iteration's model: fixed by run and iteration (≤ 64 characters)."""
    return f"rmft-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}-it{iteration:03d}"


class DeploymentRecord(Record):
    name: str
    iteration: int
    model: str  # the fine-tuned model it serves
    sku: str
    capacity: int
    state: str = "Requested"  # Requested (PUT sent, answer unknown) | Creating | Succeeded | ...
    error: str | None = None
    hosting_usd_per_hour: float  # reported, unverified: what it costs while it exists
    requested_at: float
    succeeded_at: float | None = None
    deleted_at: float | None = None


class DeploymentRegistry(Record):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    deployments: list[DeploymentRecord] = Field(default_factory=list)


class DeploymentFile:
    """`<state_dir>/deployments.json`, replaced whole on every change."""

    def __init__(self, state_dir: Path, *, run_id: str) -> None:
        self.path = Path(state_dir) / DEPLOYMENTS_FILE
        self.run_id = run_id

    def load(self) -> DeploymentRegistry:
        if not self.path.is_file():
            return DeploymentRegistry(run_id=self.run_id)
        return read_json(self.path, DeploymentRegistry)

    def get(self, name: str) -> DeploymentRecord | None:
        return next((d for d in self.load().deployments if d.name == name), None)

    def by_name(self) -> dict[str, DeploymentRecord]:
        return {d.name: d for d in self.load().deployments}

    def save(self, record: DeploymentRecord) -> None:
        registry = self.load()
        kept = [d for d in registry.deployments if d.name != record.name]
        write_json_atomic(self.path, registry.model_copy(update={"deployments": [*kept, record]}))


class ControlPlane:
    """The deployments of one Azure OpenAI account, over REST (httpx2); PUT is idempotent, so
    every call is retried on transient failures."""

    def __init__(
        self,
        azure: AzureConfig,
        *,
        timeout_s: float = 60.0,
        policy: RetryPolicy | None = None,
        rng: np.random.Generator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        missing = [
            k for k in ("subscription_id", "resource_group", "account") if not getattr(azure, k)
        ]
        if missing:
            raise ConfigError(
                f"azure.{', azure.'.join(missing)} not set: the deployment step needs the "
                "account's subscription, resource group and name"
            )
        self._token = read_secret(azure.management_token_env) or ""
        if not self._token:
            raise ConfigError(
                f"{azure.management_token_env} is not set: export an Entra token for the "
                "control plane (az account get-access-token --resource "
                "https://management.azure.com --query accessToken -o tsv)"
            )
        self.azure = azure
        self.root = (
            f"{azure.management_url.rstrip('/')}/subscriptions/{azure.subscription_id}"
            f"/resourceGroups/{azure.resource_group}/providers/Microsoft.CognitiveServices"
            f"/accounts/{azure.account}/deployments"
        )
        self.policy = policy or RetryPolicy(max_attempts=6)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.sleep = sleep
        self._http = httpx2.Client(
            timeout=timeout_s, headers={"Authorization": f"Bearer {self._token}"}
        )

    def close(self) -> None:
        self._http.close()

    def put(self, name: str, *, model: str, sku: str, capacity: int) -> dict[str, Any]:
        body = {
            "sku": {"name": sku, "capacity": capacity},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
        }
        found = self._call("PUT", name, json=body)
        assert found is not None
        return found

    def get(self, name: str) -> dict[str, Any] | None:
        return self._call("GET", name)

    def delete(self, name: str) -> None:
        self._call("DELETE", name)

    def _call(self, method: str, name: str, **kwargs: Any) -> dict[str, Any] | None:
        url = f"{self.root}/{name}"
        params = {"api-version": self.azure.management_api_version}
        what = f"{method} deployment {name}"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, url, params=params, **kwargs)
            except httpx2.HTTPError as e:
                error: RmftError = TransientProviderError(f"{what}: {type(e).__name__}: {scrub(e)}")
            else:
                if response.status_code == 404 and method in ("GET", "DELETE"):
                    return None
                if response.status_code < 400:
                    return dict(response.json()) if response.content else {}
                error = self._classify(response, what)
            if not isinstance(error, TransientProviderError) or attempt >= self.policy.max_attempts:
                raise error
            self.sleep(self.policy.wait_s(error, attempt, self.rng))

    def _classify(self, response: httpx2.Response, what: str) -> RmftError:
        try:
            body = response.json().get("error") or {}
        except ValueError:
            body = {}
        code = str(body.get("code") or "")
        message = scrub(str(body.get("message") or response.text)[:300])
        status = response.status_code
        if code == "InsufficientQuota":
            return QuotaExhaustedError(
                f"{what}: refused for quota ({status} {code}): {message} — raise the quota or "
                "lower trainer.deployment_capacity, then resume (the job is kept)"
            )
        if status in (408, 429) or status >= 500:
            wait = server_wait_s(response.headers, message)
            return TransientProviderError(f"{what}: {status}: {message}", retry_after_s=wait)
        if status in (401, 403):
            return TrainingError(
                f"{what}: {status} {code}: {message} — check {self.azure.management_token_env} "
                "(an Entra token for https://management.azure.com, with a role that may deploy)"
            )
        return TrainingError(f"{what}: rejected ({status} {code}): {message}")


def provisioning_state(resource: dict[str, Any] | None) -> str | None:
    if resource is None:
        return None
    properties = resource.get("properties") or {}
    return str(properties.get("provisioningState") or "Creating")


def delete_deployments(
    state_dir: Path,
    azure: AzureConfig,
    *,
    run_id: str,
    names: list[str] | None = None,
) -> list[DeploymentRecord]:
    """Delete this run's deployments (all, or `names`); returns the records, updated."""
    registry = DeploymentFile(state_dir, run_id=run_id)
    known = registry.by_name()
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ConfigError(
            f"not deployments of this run: {', '.join(unknown)}; known: "
            f"{', '.join(known) or 'none'}"
        )
    chosen = [known[n] for n in (names or known) if known[n].deleted_at is None]
    if not chosen:
        return []
    plane = ControlPlane(azure)
    done: list[DeploymentRecord] = []
    try:
        for record in chosen:
            plane.delete(record.name)
            updated = record.model_copy(update={"state": "Deleted", "deleted_at": time.time()})
            registry.save(updated)
            done.append(updated)
            log.info("deployment %s deleted", record.name)
    finally:
        plane.close()
    return done
