"""Bearer tokens leave esm's environment at start-up and are still found by later invokers
(a reload builds new ones): esm.invokers.http.retain_secrets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from esm.config import parse_config
from esm.invokers import http
from esm.invokers.http import HttpInvoker, retain_secrets

NAME = "ESM_TEST_RETAINED_TOKEN"


def test_retained_token_leaves_the_environment_and_serves_later_invokers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(NAME, "s3cr3t-value")
    monkeypatch.setattr(http, "_secrets", {})
    functions = parse_config(
        {
            "functions": {
                "h": {"kind": "http", "url": "http://127.0.0.1:1/x", "bearer_token_env": NAME},
                "p": {"kind": "python", "handler": "m.f"},
            }
        }
    ).functions
    assert retain_secrets(functions) == [NAME]
    assert NAME not in os.environ
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ.get({NAME!r}, 'absent'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "absent", "a child process inherited the token"
    for _ in range(2):  # the first start, then a reload
        invoker = HttpInvoker(functions["h"])
        assert invoker._headers["Authorization"] == "Bearer s3cr3t-value"
