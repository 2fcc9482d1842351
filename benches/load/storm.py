#!/usr/bin/env python3
"""Cold-key storm driver for scripts/bench-load.sh (wrk cannot do this).

    storm.py HOST PORT PATH_PREFIX KEYS CONNS

Opens CONNS keep-alive HTTP/1.1 connections; for each of KEYS fresh keys (PATH_PREFIX + index)
every connection sends its GET at the same moment, and the next key starts once all answers are
in. Prints one line: STORM requests= errors= p50_us= p99_us= wall_ms= xcache=HIT:n,MISS:n,...
A failed connection is counted as an error and reopened for the next key.
"""
import asyncio
import sys
import time
from collections import Counter

TIMEOUT_S = 10.0


async def read_response(reader):
    """Reads one response; returns (status, x_cache). Handles Content-Length and chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("x-cache", "-")


class Conn:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path):
        """Sends one GET and waits for its answer; returns (latency_us, status, x_cache)."""
        if self.writer is None:
            await self.open()
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        start = time.perf_counter()
        self.writer.write(request)
        status, cache = await asyncio.wait_for(read_response(self.reader), TIMEOUT_S)
        return int((time.perf_counter() - start) * 1e6), status, cache

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def main(host, port, prefix, keys, conns):
    clients = [Conn(host, port) for _ in range(conns)]
    await asyncio.gather(*(c.open() for c in clients))
    latencies, errors, caches = [], 0, Counter()
    began = time.perf_counter()
    for key in range(keys):
        path = f"{prefix}{key}"
        results = await asyncio.gather(*(c.get(path) for c in clients), return_exceptions=True)
        for client, result in zip(clients, results):
            if isinstance(result, BaseException) or not 200 <= result[1] < 300:
                errors += 1
                client.close()
            else:
                latencies.append(result[0])
                caches[result[2]] += 1
    wall_ms = (time.perf_counter() - began) * 1000
    for client in clients:
        client.close()
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else 0

    xcache = ",".join(f"{k}:{v}" for k, v in sorted(caches.items()))
    print(f"STORM requests={len(latencies)} errors={errors} p50_us={pct(50)} "
          f"p99_us={pct(99)} wall_ms={wall_ms:.0f} xcache={xcache}")


if __name__ == "__main__":
    h, p, pre, k, c = sys.argv[1:6]
    asyncio.run(main(h, int(p), pre, int(k), int(c)))
