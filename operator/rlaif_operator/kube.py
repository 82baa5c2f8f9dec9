"""A small asyncio Kubernetes API client on aiohttp, authenticated with kopf's login result.

The operator's writes (create, delete, merge-patch of status, events) go through here rather than
the synchronous ``kubernetes`` client: no thread pool, one shared connection pool, and the same
credentials kopf's watches use (``kopf.ConnectionInfo``), re-read when kopf logs in again.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import kopf

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        reason = body.get("message") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"{method} {path}: HTTP {status}: {reason}")

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""


class KubeClient:
    def __init__(
        self, info: kopf.ConnectionInfo, timeout: float = 30.0, pool: int = 64, on_request: Any = None
    ) -> None:
        self.info = info
        self.on_request = on_request  # called with (method, status, seconds) after every request
        self.server = info.server.rstrip("/")
        headers = {"Accept": JSON, "User-Agent": "rlaif-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = (
            aiohttp.BasicAuth(info.username, info.password or "")
            if info.username and not info.token
            else None
        )
        connector = aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=pool)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0)),
            trust_env=info.trust_env,
        )
        self.requests = 0

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        params: dict[str, str] | None = None,
    ) -> Any:
        self.requests += 1
        started = time.perf_counter()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else None
        async with self.session.request(
            method, self.server + path, data=data, headers=headers, params=params
        ) as resp:
            text = await resp.text()
            if self.on_request is not None:
                self.on_request(method, resp.status, time.perf_counter() - started)
            try:
                payload: Any = json.loads(text) if text else None
            except ValueError:
                payload = text
            if resp.status >= 400:
                raise ApiError(resp.status, payload, method, path)
            return payload

    # -- helpers -------------------------------------------------------------------------------
    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PATCH", path, body, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.request("DELETE", path, body)


def collection_path(api_version: str, plural: str, namespace: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


PLURALS = {
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Job": "jobs",
    "JobSet": "jobsets",  # jobset.x-k8s.io: a multi-node stage
    "Event": "events",
    "Deployment": "deployments",  # apps: labeler.server
    "Service": "services",  # labeler.server's endpoint
}


def object_collection(obj: dict[str, Any]) -> str:
    return collection_path(obj["apiVersion"], PLURALS[obj["kind"]], obj["metadata"]["namespace"])


RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)
