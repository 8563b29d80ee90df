"""esm.event_loop: uvloop where installed, asyncio's loop on request, bad values explained."""

from __future__ import annotations

import asyncio

import pytest

from esm import event_loop
from esm.errors import ConfigError


def test_auto_picks_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop", reason="uvloop is an optional extra (esm[fast])")
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.choice() == "uvloop"
    assert event_loop.run(loop_module).startswith("uvloop")


def test_asyncio_opt_out_runs_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.backend_options() == {"use_uvloop": False}
    assert event_loop.run(loop_module).startswith("asyncio")


def test_unknown_loop_names_the_variable_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match=r"ESM_EVENT_LOOP='trio' is not one of auto, uvloop"):
        event_loop.choice()


def test_unknown_http_client_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from esm.aws_json import HTTP_CLIENT_ENV, http_client_choice

    monkeypatch.setenv(HTTP_CLIENT_ENV, "curl")
    with pytest.raises(ConfigError, match=r"ESM_HTTP_CLIENT='curl' is not one of httptools"):
        http_client_choice()
    monkeypatch.setenv(HTTP_CLIENT_ENV, "AIOHTTP")
    assert http_client_choice() == "aiohttp"
