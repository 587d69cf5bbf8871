"""The llama.cpp server helper hands back only the server it started: the port is the one that
server bound and holds, and the server there must list the model under this call's own name.
Fake servers stand in for llama_cpp.server (no model needed)."""

from __future__ import annotations

import sys
import threading

import pytest
from server_fakes import FAKE_LLAMA_SERVER, foreign_server

from helpers.ggufq import run


def _fake(monkeypatch, chatter: int = 0, claim: int | None = None) -> None:
    """serve() starts the fake instead of llama_cpp.server."""

    def command(path, alias, n_ctx):
        extra = [str(claim)] if claim else []
        return [sys.executable, "-c", FAKE_LLAMA_SERVER, alias, "0", str(chatter), *extra]

    monkeypatch.setattr(run, "_server_command", command)


def test_a_server_that_logs_a_lot_is_not_blocked(monkeypatch):
    """A real model's load log is far longer than a pipe's 64 KiB: the server must not block
    on it (it did, when its stderr went to a pipe that nobody read)."""
    _fake(monkeypatch, chatter=300_000)
    with run.serve("unused.gguf", timeout=20) as url:
        assert url.startswith("http://127.0.0.1:")
        assert run._served_models(url)[0].startswith("course-")


def test_another_programs_answer_is_refused_with_the_port_named(monkeypatch):
    foreign = foreign_server()
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    _fake(monkeypatch, claim=port)  # the started process points at another program's port
    try:
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port} answers, but not as the "):
            with run.serve("unused.gguf", timeout=20):
                pass
    finally:
        foreign.shutdown()
        foreign.server_close()


def test_the_server_runs_on_localhost_whatever_the_environment(monkeypatch):
    """llama_cpp.server reads $HOST and $PORT before its command line: they are pinned."""
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "8000")
    monkeypatch.setenv("API_KEY", "a-learner's-key")
    env = run._server_env()
    assert env["HOST"] == "127.0.0.1" and env["PORT"] == "0" and "API_KEY" not in env
    command = run._server_command("m.gguf", "course-1", 256)
    assert command[command.index("--port") + 1] == "0"
    assert command[command.index("--host") + 1] == "127.0.0.1"


def test_a_server_that_exits_is_reported_with_its_log(monkeypatch):
    monkeypatch.setattr(
        run,
        "_server_command",
        lambda path, alias, n_ctx: [sys.executable, "-c", "import sys; sys.exit('no model')"],
    )
    with pytest.raises(RuntimeError, match="exited: no model"):
        with run.serve("unused.gguf", timeout=20):
            pass
