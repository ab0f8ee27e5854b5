"""One-shot HTTP GETs against local servers: the operator's endpoints, Prometheus.

The operator's metrics endpoint serves a self-signed certificate, so these accept any
certificate; they are for servers this machine runs, never for anything else.
"""

from __future__ import annotations

import aiohttp


async def http_get(url: str, *, token: str | None = None) -> tuple[int, str]:
    """GET ``url`` (self-signed HTTPS accepted) with an optional bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=30)
        ) as response,
    ):
        return response.status, await response.text()


async def http_status(url: str, *, token: str | None = None) -> int:
    """The status code of a GET, or 0 when nothing answered."""
    try:
        return (await http_get(url, token=token))[0]
    except (aiohttp.ClientError, TimeoutError):
        return 0
