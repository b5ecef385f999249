"""The OpenAI SDK's HTTP connections, split over several small pools.

The SDK's transport (`httpx2`, on `httpcore2`) scans every connection of its pool twice per
request (to assign one, and again when the reply is read), and each scan asks every idle
connection's socket whether it has expired (a `poll` and a `getpeername` per connection). With
the 256 connections that 256 concurrent requests need, that scan was the largest CPU cost of a
rollout's client. Several pools of `shard_size` connections each keep every scan short; a request
goes to the pool with the fewest requests in flight, so no pool ever needs more connections than
it has while the provider keeps at most `connections` requests in flight.

Still one `AsyncOpenAI` client per endpoint, over real HTTP: only its transport is composed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2

# Connections per pool: scans stay a few microseconds; keep-alive still covers every request.
SHARD_SIZE = 8


@dataclass
class _Shard:
    transport: httpx2.AsyncHTTPTransport
    in_flight: int = 0


class _Release(httpx2.AsyncByteStream):
    """A response body that marks its request finished in its pool once read and closed."""

    def __init__(self, stream: httpx2.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._shard is not None:  # closing twice releases once
                self._shard.in_flight -= 1
                self._shard = None


class ShardedTransport(httpx2.AsyncBaseTransport):
    """`connections` keep-alive connections in pools of at most `shard_size`."""

    def __init__(self, *, connections: int, shard_size: int = SHARD_SIZE) -> None:
        connections = max(1, connections)
        shard_size = max(1, min(shard_size, connections))
        count = math.ceil(connections / shard_size)
        per_shard = math.ceil(connections / count)
        limits = httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        ssl_context = httpx2.create_ssl_context()  # loading the CA bundle once, not per pool
        self._shards = [
            _Shard(httpx2.AsyncHTTPTransport(verify=ssl_context, limits=limits))
            for _ in range(count)
        ]
        self._turn = 0

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per pool (read for tests and diagnostics)."""
        return [s.in_flight for s in self._shards]

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Least busy pool; the start rotates so that ties spread round-robin.
        n = len(self._shards)
        self._turn = (self._turn + 1) % n
        shard = self._shards[self._turn]
        for i in range(1, n):
            other = self._shards[(self._turn + i) % n]
            if other.in_flight < shard.in_flight:
                shard = other
        shard.in_flight += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.in_flight -= 1
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Release(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()
