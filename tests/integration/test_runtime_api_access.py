"""Each Runtime API endpoint serves only its own environment's session (esm.invokers.
runtime_api): a client in the admitted session gets its event, any other gets 403."""

from __future__ import annotations

import http.client
import subprocess
import sys

import anyio
import pytest
import structlog

from esm.invokers.runtime_api import (
    Invocation,
    InvocationChannel,
    RuntimeApiEndpoint,
)

CLIENT = """
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
c.request("GET", "/2018-06-01/runtime/invocation/next")
r = c.getresponse()
print(r.status, r.read().decode())
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def get_next(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/2018-06-01/runtime/invocation/next")
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.anyio
async def test_only_the_admitted_session_is_served() -> None:
    channel = InvocationChannel()
    endpoint = RuntimeApiEndpoint(channel, structlog.get_logger())
    await endpoint.start()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(endpoint.port)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        endpoint.admit(child.pid)
        invocation = Invocation("req-1", b'{"n": 1}', 5.0, "arn:aws:lambda:::function:f")
        # This test process is not in the child's session: refused, and the event waits.
        assert await anyio.to_thread.run_sync(get_next, endpoint.port) == 403
        channel.submit(invocation)
        with anyio.fail_after(20):
            await invocation.delivered.wait()
        output, _ = await anyio.to_thread.run_sync(child.communicate)
        assert output.strip() == '200 {"n": 1}'
    finally:
        await endpoint.aclose()


@pytest.mark.anyio
async def test_a_client_of_no_session_is_refused_while_none_is_admitted() -> None:
    endpoint = RuntimeApiEndpoint(InvocationChannel(), structlog.get_logger())
    await endpoint.start()
    try:
        endpoint.admit(2**22 + 1)  # above pid_max's default: a session no process has
        assert await anyio.to_thread.run_sync(get_next, endpoint.port) == 403
    finally:
        await endpoint.aclose()
