"""Azure OpenAI as a policy: `azure/<deployment>` answered by that deployment through the
`openai` SDK's Azure client (`AsyncAzureOpenAI`: `<endpoint>/openai/deployments/<d>/...` with
`api-version`), with everything else — retries, 429 classification, limits, costs — as the
OpenAI provider does it. The credential is the `api-key` header or an Entra ID bearer token,
read from the environment as `[azure]` says (`azure_credential`), never from the config.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import openai

from rmft_api.config import AzureConfig
from rmft_api.credentials import read_secret
from rmft_api.errors import ConfigError
from rmft_api.providers.http_pool import ShardedTransport
from rmft_api.providers.openai import OpenAIProvider


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def azure_endpoint(azure: AzureConfig) -> str:
    if not azure.endpoint:
        raise ConfigError(
            "azure.endpoint is not set: the Azure OpenAI resource, e.g. "
            "https://<resource>.openai.azure.com"
        )
    return azure.endpoint.rstrip("/")


def azure_credential(azure: AzureConfig) -> dict[str, str]:
    """`{"api_key": ...}` or `{"azure_ad_token": ...}` for the SDK's Azure client."""
    env = azure.credential_env
    value = read_secret(env)
    if not value:
        how = (
            "the resource's key"
            if azure.auth == "api_key"
            else "an Entra ID token (az account get-access-token --resource "
            "https://cognitiveservices.azure.com --query accessToken -o tsv)"
        )
        raise ConfigError(f"{env} is not set: export {how} (azure.auth = {azure.auth!r})")
    return {"api_key": value} if azure.auth == "api_key" else {"azure_ad_token": value}


class AzureOpenAIProvider(OpenAIProvider):
    """Chat completions from one Azure OpenAI deployment."""

    def __init__(self, deployment: str, *, azure: AzureConfig, spec: str, **options: Any) -> None:
        endpoint = azure_endpoint(azure)
        self._azure = azure
        self._credential = azure_credential(azure)
        super().__init__(deployment, base_url=endpoint, spec=spec, **options)
        self._api_key = next(iter(self._credential.values()))  # what error texts are scrubbed of

    def _client(self, url: str) -> openai.AsyncOpenAI:
        client = self._clients.get(url)
        if client is None:
            http_client = openai.DefaultAsyncHttpxClient(
                transport=ShardedTransport(connections=self._concurrency),
                timeout=self._timeout_s,
            )
            client = openai.AsyncAzureOpenAI(
                azure_endpoint=url,
                azure_deployment=self.model,
                api_version=self._azure.api_version,
                max_retries=0,
                timeout=self._timeout_s,
                http_client=http_client,
                api_key=self._credential.get("api_key"),
                azure_ad_token=self._credential.get("azure_ad_token"),
            )
            self._clients[url] = client
        return client


__all__ = ["AzureOpenAIProvider", "azure_credential", "azure_endpoint"]
