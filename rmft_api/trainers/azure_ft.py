"""Fine-tuning on Azure OpenAI: the OpenAI trainer's job flow over the `openai` SDK's Azure
client, then the deployment a fine-tuned model needs before it can serve.

The job part is `OpenAIFineTuner` unchanged — intent recorded before every create, creates
sent once, lost ones looked up by name / metadata — with the Azure client
(`<endpoint>/openai/...?api-version=`, `api-key` or an Entra token from the environment) and
Azure's `trainingType` in the job body. Azure names fine-tuned models itself (e.g.
`gpt-4o-mini-2024-07-18.ft-<id>`); a later iteration continues that model (init_from =
previous), found through the deployment that served it.

A job's success is not the end: its model is deployed (trainers/azure_deploy.py) under the
iteration's fixed name, recorded before the PUT, and the job is reported as `deploying` (still
in progress) until the deployment succeeds; only then does `poll` return `succeeded` with the
next policy `azure/<deployment>`. A failed deployment ends the run with the reason (resume
deploys again, same name); a quota refusal stops it with the quota named.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai

from rmft_api.config import AzureConfig, AzureTrainerConfig, Config
from rmft_api.errors import ConfigError, TrainingError
from rmft_api.providers.azure import azure_credential, azure_endpoint
from rmft_api.providers.retry import RetryPolicy
from rmft_api.schema import JobRef
from rmft_api.trainers.azure_deploy import (
    FAILED,
    SUCCEEDED,
    ControlPlane,
    DeploymentFile,
    DeploymentRecord,
    deployment_name,
    provisioning_state,
)
from rmft_api.trainers.crash import crash_point
from rmft_api.trainers.openai_ft import OpenAIFineTuner
from rmft_api.trainers.openai_ft_api import FineTuneAPI

log = logging.getLogger(__name__)

DEPLOYING = "deploying"  # not an OpenAI status: the job succeeded, its deployment is not up yet


class AzureFineTuneAPI(FineTuneAPI):
    """FineTuneAPI over `openai.AzureOpenAI`; errors scrubbed of the Azure credential."""

    def __init__(self, *, azure: AzureConfig, **options: Any) -> None:
        super().__init__(base_url=azure_endpoint(azure), **options)
        self.azure = azure
        self._credential = azure_credential(azure)
        self._api_key = next(iter(self._credential.values()))

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.AzureOpenAI(
                azure_endpoint=self.base_url,
                api_version=self.azure.api_version,
                api_key=self._credential.get("api_key"),
                azure_ad_token=self._credential.get("azure_ad_token"),
                max_retries=0,  # a retried create would be a duplicate, billable object
                timeout=self.timeout_s,
            )
        return self._client


class AzureFineTuner(OpenAIFineTuner):
    """The `Trainer` protocol over Azure OpenAI fine-tuning plus the deployment step."""

    backend = "azure"

    def __init__(
        self,
        config: AzureTrainerConfig,
        *,
        azure: AzureConfig,
        run_id: str,
        state_dir: Path,
        rng: np.random.Generator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            config,
            run_id=run_id,
            state_dir=state_dir,
            base_url=azure_endpoint(azure),
            rng=rng,
            sleep=sleep,
        )
        self.azure_trainer = config
        self.azure = azure
        self.api = AzureFineTuneAPI(
            azure=azure,
            api_key_env=azure.credential_env,
            timeout_s=config.timeout_s,
            policy=RetryPolicy(max_attempts=config.max_retries + 1),
            rng=self.api.rng,
            sleep=sleep,
            lookup_window=config.lookup_window,
        )
        self.deployments = DeploymentFile(state_dir, run_id=run_id)
        self._control: ControlPlane | None = None
        self._waiting_since: dict[str, float] = {}  # deployment → when this process began

    @classmethod
    def for_run(cls, cfg: Config, *, run_id: str, state_dir: Path) -> AzureFineTuner:
        if not isinstance(cfg.trainer, AzureTrainerConfig):
            raise ConfigError(f'trainer.kind is {cfg.trainer.kind!r}, not "azure"')
        return cls(cfg.trainer, azure=cfg.azure, run_id=run_id, state_dir=state_dir)

    @property
    def control(self) -> ControlPlane:
        if self._control is None:
            self._control = ControlPlane(self.azure, timeout_s=self.azure_trainer.timeout_s)
        return self._control

    def close(self) -> None:
        super().close()
        if self._control is not None:
            self._control.close()
            self._control = None

    # ---------------------------------------------------------------- protocol

    def poll(self, ref: JobRef) -> JobRef:
        """The job's state; once it succeeded, its deployment's (`deploying` until up)."""
        ref = super().poll(ref)
        if ref.status != "succeeded":
            return ref
        assert ref.result_policy is not None
        model = ref.result_policy.removeprefix("openai/")
        name = deployment_name(self.run_id, ref.iteration)
        if self._deploy(name, ref.iteration, model) != SUCCEEDED:
            return ref.model_copy(update={"status": DEPLOYING, "result_policy": None})
        if self.azure_trainer.delete_superseded:
            self._delete_before(ref.iteration)
        return ref.model_copy(update={"result_policy": f"azure/{name}"})

    def model_for(self, base_policy: str) -> str:
        """The model a job trains: the base model, or (init_from = previous) the fine-tuned
        model that this run's deployment `azure/<d>` serves."""
        backend, _, name = base_policy.partition("/")
        base = self.azure_trainer.model
        assert base is not None  # the config requires it
        if backend == "azure" and self.config.init_from == "previous":
            record = self.deployments.get(name)
            if record is not None:
                return record.model
        return base

    def _service_params(self) -> dict[str, Any]:
        return {"extra_body": {"trainingType": self.azure_trainer.training_type}}

    # ---------------------------------------------------------------- deployments

    def _deploy(self, name: str, iteration: int, model: str) -> str:
        """Create (once) or follow the deployment of `model`; its provisioning state."""
        c = self.azure_trainer
        record = self.deployments.get(name)
        fresh = (
            record is None
            or record.model != model
            or record.state == FAILED
            or record.deleted_at is not None
        )
        if record is not None and not fresh and record.state == SUCCEEDED:
            return SUCCEEDED
        if record is None or fresh:
            record = DeploymentRecord(
                name=name,
                iteration=iteration,
                model=model,
                sku=c.deployment_sku,
                capacity=c.deployment_capacity,
                hosting_usd_per_hour=c.hosting_usd_per_hour,
                requested_at=time.time(),
            )
            self.deployments.save(record)  # recorded before the PUT: always findable
            state = self._put(record)
            log.warning(
                "deployment %s of %s requested (sku %s, capacity %d): an idle deployment costs "
                "about $%.2f/hour (reported, unverified) until deleted — `rmft-api deployments "
                "RUN --delete`",
                name,
                model,
                c.deployment_sku,
                c.deployment_capacity,
                c.hosting_usd_per_hour,
            )
        else:
            seen = provisioning_state(self.control.get(name))
            # None: the PUT never arrived (a kill), or it was deleted since.
            state = seen if seen is not None else self._put(record)
        update: dict[str, Any] = {"state": state}
        if state == SUCCEEDED:
            update["succeeded_at"] = time.time()
        if state == FAILED:
            update["error"] = "provisioningState Failed"
        self.deployments.save(record.model_copy(update=update))
        if state == FAILED:
            raise TrainingError(
                f"deployment {name} of {model} failed on {self.azure.account}; the fine-tuned "
                "model is kept: resume the run to deploy it again (same name, no duplicate), or "
                "check the account's region and SKU (trainer.deployment_sku)"
            )
        # Measured in this process: a resumed run waits its full time again.
        since = self._waiting_since.setdefault(name, time.monotonic())
        if state != SUCCEEDED and time.monotonic() - since > c.deployment_timeout_s:
            raise TrainingError(
                f"deployment {name} still {state} after {c.deployment_timeout_s:g}s; resume to "
                "keep waiting (it is not created again)"
            )
        return state

    def _put(self, record: DeploymentRecord) -> str:
        resource = self.control.put(
            record.name, model=record.model, sku=record.sku, capacity=record.capacity
        )
        crash_point("azure:deployment-created")  # created on Azure, its state not yet recorded
        return provisioning_state(resource) or "Creating"

    def _delete_before(self, iteration: int) -> None:
        """Delete this run's deployments of earlier iterations: no longer played."""
        for record in self.deployments.load().deployments:
            if record.iteration < iteration and record.deleted_at is None:
                self.control.delete(record.name)
                self.deployments.save(
                    record.model_copy(update={"state": "Deleted", "deleted_at": time.time()})
                )
                log.info("superseded deployment %s deleted", record.name)


__all__ = ["DEPLOYING", "AzureFineTuneAPI", "AzureFineTuner"]
