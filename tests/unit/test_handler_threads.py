"""Sync handlers' worker threads: anyio.to_thread's contract (results, errors, context,
abandoning on cancel), at a fraction of its cost per call."""

from __future__ import annotations

import contextvars
import threading
import time

import anyio
import pytest

import esm.invokers.python as python_invoker
from esm.invokers.python import HandlerThreads

request = contextvars.ContextVar("request", default="none")


def run(fn):  # type: ignore[no-untyped-def]
    return anyio.run(fn)


def test_a_call_runs_in_another_thread_and_returns_its_result() -> None:
    async def main() -> tuple[str, int]:
        threads = HandlerThreads("t")
        try:
            return await threads.run(lambda a, b: (threading.current_thread().name, a + b), 2, 3)
        finally:
            threads.close()

    name, total = run(main)
    assert name == "t" and name != threading.current_thread().name
    assert total == 5


@pytest.mark.parametrize(
    ("raised", "seen"),
    [
        (ValueError("bad"), ValueError),
        (SystemExit(3), SystemExit),
        (KeyboardInterrupt(), KeyboardInterrupt),
        (StopIteration(), RuntimeError),
    ],
)
def test_what_the_handler_raises_is_raised_in_the_caller(
    raised: BaseException, seen: type[BaseException]
) -> None:
    def handler() -> None:
        raise raised

    async def main() -> None:
        threads = HandlerThreads("t")
        try:
            with pytest.raises(seen):
                await threads.run(handler)
        finally:
            threads.close()

    run(main)


def test_the_call_sees_the_callers_context() -> None:
    async def main() -> str:
        request.set("r-1")
        threads = HandlerThreads("t")
        try:
            return await threads.run(request.get)  # type: ignore[no-any-return]
        finally:
            threads.close()

    assert run(main) == "r-1"


def test_a_cancelled_caller_stops_waiting_and_the_thread_runs_on() -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        finished.set()
        return "late"

    async def main() -> float:
        threads = HandlerThreads("t")
        try:
            started = time.monotonic()
            with anyio.move_on_after(0.05):
                await threads.run(slow)
            waited = time.monotonic() - started
            assert not finished.is_set()
            # The abandoned thread is busy: the next call gets a thread of its own.
            assert await threads.run(lambda: "next") == "next"
            await anyio.to_thread.run_sync(finished.wait, 5)
            return waited
        finally:
            threads.close()

    assert run(main) < 0.25
    assert finished.is_set()


def test_concurrent_calls_run_in_parallel_and_threads_are_reused() -> None:
    barrier = threading.Barrier(3, timeout=5)
    idents: list[int] = []

    def meet() -> None:
        barrier.wait()
        idents.append(threading.get_ident())

    async def main() -> int:
        threads = HandlerThreads("t")
        try:
            for _ in range(3):
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(threads.run, meet)
            return len(set(idents))
        finally:
            threads.close()

    assert run(main) == 3  # three at once (the barrier), the same three every round


def test_idle_threads_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(python_invoker, "IDLE_THREAD_SECONDS", 0.0)

    async def main() -> None:
        threads = HandlerThreads("idle-test")
        try:
            await threads.run(lambda: None)
            first = [t for t in threading.enumerate() if t.name == "idle-test"]
            await threads.run(lambda: None)  # the idle thread is retired, a new one runs
            for thread in first:
                thread.join(5)
                assert not thread.is_alive()
        finally:
            threads.close()

    run(main)


def test_quick_and_slow_calls_in_any_order_each_get_their_own_outcome() -> None:
    """A handler whose last call was quick is waited for briefly on the loop thread; one
    slower than the brief wait is awaited. Mixed, in any order, every call gets its own
    result or error (no outcome is taken twice or by the wrong call), and the loop keeps
    running other tasks while a slow one runs."""
    pause = 20 * python_invoker.BRIEF_WAIT_SECONDS

    def handler(i: int, slow: bool) -> int:
        if slow:
            time.sleep(pause)
        if i % 5 == 4:
            raise ValueError(i)
        return i

    async def main() -> tuple[list[object], int]:
        threads = HandlerThreads("t")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(pause / 4)

        outcomes: list[object] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                for i, slow in enumerate([False, True, True, False, False, True, False] * 3):
                    try:
                        outcomes.append(await threads.run(handler, i, slow))
                    except ValueError as exc:
                        outcomes.append(exc.args)
                    if slow:  # the next call is awaited at once (a quick one may be too,
                        assert not threads.quick  # on a loaded machine: not asserted)
                tg.cancel_scope.cancel()
        finally:
            threads.close()
        return outcomes, ticks

    outcomes, ticks = run(main)
    assert outcomes == [(i,) if i % 5 == 4 else i for i in range(21)]
    assert ticks > 0


def test_request_ids_are_distinct_version_4_uuids() -> None:
    """context.aws_request_id is a random UUID (version 4, RFC 4122 variant), as Lambda's."""
    import uuid

    ids = [python_invoker.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
