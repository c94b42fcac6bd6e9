"""ddkit.allocator: the jemalloc environment and the one-time re-exec."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ddkit import allocator


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("LD_PRELOAD", "MALLOC_CONF", "DDKIT_ALLOCATOR", "DDKIT_ALLOCATOR_REEXEC"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_environment_preloads_found_library(clean_env):
    clean_env.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    env = allocator.environment()
    assert env == {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2", "MALLOC_CONF": allocator.MALLOC_CONF}
    clean_env.setenv("LD_PRELOAD", "/x/other.so")
    clean_env.setenv("MALLOC_CONF", "narenas:1")
    env = allocator.environment()
    assert env == {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2:/x/other.so"}  # the user's MALLOC_CONF is kept


def test_environment_empty_when_absent_active_or_declined(clean_env):
    clean_env.setattr(allocator, "find_jemalloc", lambda: None)
    assert allocator.environment() == {}
    clean_env.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    clean_env.setenv("DDKIT_ALLOCATOR", "system")
    assert allocator.environment() == {}
    clean_env.setenv("DDKIT_ALLOCATOR", "auto")
    clean_env.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert allocator.active() == "jemalloc"
    assert allocator.environment() == {}


def test_bad_mode_is_one_line(clean_env):
    clean_env.setenv("DDKIT_ALLOCATOR", "tcmalloc")
    with pytest.raises(SystemExit, match="DDKIT_ALLOCATOR must be 'auto' or 'system'"):
        allocator.environment()


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="jemalloc is not installed here")
def test_reexec_runs_the_same_command_under_jemalloc(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from ddkit import allocator
        print("before", allocator.active(), sys.argv[1:], flush=True)
        allocator.reexec()
        print("after", allocator.active(), sys.argv[1:], os.environ.get("MALLOC_CONF"))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "DDKIT_ALLOCATOR_REEXEC")}
    out = subprocess.run([sys.executable, str(script), "a b", "c"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["before system ['a b', 'c']", "before jemalloc ['a b', 'c']",
                   f"after jemalloc ['a b', 'c'] {allocator.MALLOC_CONF}"]
    out = subprocess.run([sys.executable, str(script)], env={**env, "DDKIT_ALLOCATOR": "system"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["before system []", "after system [] None"]
