"""Lambda's environment in the one os.environ in-process functions share (pure logic)."""

from __future__ import annotations

import os

import pytest

from esm.invokers.python import InProcessEnvironment


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ESM_T_ONLY_A", "ESM_T_BOTH", "ESM_T_SHARED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ESM_T_BOTH", "daemon's own")


def test_a_function_does_not_see_a_variable_only_another_function_defines(environ: None) -> None:
    env = InProcessEnvironment()
    a, b = object(), object()
    env.acquire({"ESM_T_SHARED": "s"})
    env.acquire({"ESM_T_SHARED": "s"})
    env.enter(a, {"ESM_T_ONLY_A": "a", "ESM_T_BOTH": "a"})
    assert os.environ["ESM_T_ONLY_A"] == "a" and os.environ["ESM_T_BOTH"] == "a"
    env.enter(b, {})
    assert "ESM_T_ONLY_A" not in os.environ
    assert os.environ["ESM_T_BOTH"] == "daemon's own"
    assert os.environ["ESM_T_SHARED"] == "s"  # the shared variables stay for every function
    env.enter(a, {"ESM_T_ONLY_A": "a", "ESM_T_BOTH": "a"})
    assert os.environ["ESM_T_ONLY_A"] == "a"
    env.release(a)
    env.release(b)
    assert "ESM_T_ONLY_A" not in os.environ and "ESM_T_SHARED" not in os.environ
    assert os.environ["ESM_T_BOTH"] == "daemon's own"


def test_a_new_instance_without_a_variable_does_not_inherit_it(environ: None) -> None:
    """A reload that removes a variable: the new instance (entered before the old one is
    closed, as reload creates replacements first) must not see the old value."""
    env = InProcessEnvironment()
    old, new = object(), object()
    env.acquire({})
    env.enter(old, {"ESM_T_ONLY_A": "1"})
    env.acquire({})
    env.enter(new, {})
    assert "ESM_T_ONLY_A" not in os.environ
    env.release(old)
    env.release(new)
