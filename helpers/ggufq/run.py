"""Run a GGUF file in llama.cpp through ``llama-cpp-python``: greedy decoding token by token,
perplexity from llama.cpp's own logits, and its OpenAI-compatible server on 127.0.0.1 (on a
port it holds, checked to be the process started here before its URL is handed back)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


def load_gguf(
    path: str | Path,
    n_ctx: int = 256,
    logits_all: bool = False,
    n_threads: int = 2,
    verbose: bool = False,
):
    """A ``llama_cpp.Llama`` for the file (quiet unless ``verbose``; ``n_threads`` CPU
    threads). ``logits_all`` keeps every position's logits (for perplexity)."""
    from llama_cpp import Llama

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no GGUF file there")
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        logits_all=logits_all,
        verbose=verbose,
        seed=0,
    )


def load_with_log(path: str | Path, n_ctx: int = 256):
    """Load with llama.cpp's log captured: ``(llm or None, error or None, log text)``."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        try:
            llm, error = load_gguf(path, n_ctx, verbose=True), None
        except ValueError as err:  # llama-cpp-python's "Failed to load model from file"
            llm, error = None, err
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # verbose=True above switched llama.cpp's log on for the process
    return llm, error, buffer.getvalue()


def greedy_ids(llm, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """Greedy continuation of ``prompt_ids`` in llama.cpp.

    Returns:
        ``(new_ids, stopped)``: the new tokens, the end-of-generation token included if it came,
        and whether an end-of-generation token (the file's EOS/EOT) stopped the loop.
    """
    import llama_cpp

    llm.reset()
    new: list[int] = []
    for token in llm.generate(list(prompt_ids), temp=0.0, top_k=1, reset=True):
        new.append(int(token))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):  # the file's EOS/EOT ids
            return new, True
        if len(new) >= max_new_tokens:
            break
    return new, False


def perplexity(llm, ids: Sequence[int], window: int) -> dict:
    """Token-weighted perplexity over disjoint windows, from llama.cpp's logits (the model
    must be loaded with ``logits_all=True``). Returns ``{"ppl", "n_tokens"}``."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = list(ids[start : start + window])
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)  # (T-1, V)
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        nll -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return {"ppl": float(np.exp(nll / count)), "n_tokens": count}


# uvicorn (under llama_cpp.server) logs the port it bound, also when it was asked for port 0
_LISTENING = re.compile(r"Uvicorn running on \S*?http://127\.0\.0\.1:(\d+)")


def _server_command(path: str | Path, alias: str, n_ctx: int) -> list[str]:
    """llama-cpp-python's server for the file on 127.0.0.1, on a port the system picks (0) and
    the server then holds, serving the model under the name ``alias``; 2 CPU threads."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", "0", "--n_ctx", str(n_ctx), "--n_threads", "2"]  # fmt: skip


def _server_env() -> dict[str, str]:
    """The environment for the server: llama_cpp.server lets $HOST and $PORT override its
    command line, so they are set here (never a learner's HOST=0.0.0.0 or a platform's PORT),
    and an $API_KEY would lock the check of ``/v1/models`` out."""
    env = {k: v for k, v in os.environ.items() if k.upper() != "API_KEY"}  # read by its settings
    return {**env, "HOST": "127.0.0.1", "PORT": "0"}


def _log_text(log: Path) -> str:
    """The server's log so far (read through its own handle: the server's offset is its own)."""
    return log.read_text(errors="replace")


def _bound_port(log: Path) -> int | None:
    """The port the server says it listens on, once its log says so."""
    found = _LISTENING.search(_log_text(log))
    return int(found.group(1)) if found else None


def _served_models(url: str) -> list[str] | None:
    """The model names the server at ``url`` lists, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
            listing = json.loads(response.read())
    except urllib.error.HTTPError:  # something answers, but not with a list of models
        return []
    except OSError:
        return None
    except ValueError:  # an answer that is not JSON: not an OpenAI-compatible server
        return []
    data = listing.get("data") if isinstance(listing, dict) else None
    return [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _wait_until_ours(proc, log, alias: str, deadline: float) -> str:
    """The base URL once the started server answers on the port it bound, under ``alias``.

    Raises:
        RuntimeError: the server exited, or another program answers on that port.
        TimeoutError: no answer before ``deadline``.
    """
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {_log_text(log)[-2000:]}")
        port = _bound_port(log)
        if port is not None:
            url = f"http://127.0.0.1:{port}"
            models = _served_models(url)
            if models is not None and alias in models:
                return url
            if models is not None:
                raise RuntimeError(
                    f"{url} answers, but not as the server started here: it lists {models[:3] or 'no model'}, "
                    f"not {alias!r} (another program on that port?)"
                )
        if time.monotonic() > deadline:
            where = f"on port {port}" if port else "(its log names no port yet)"
            raise TimeoutError(f"llama_cpp.server did not answer {where} in time")
        time.sleep(0.5)


@contextlib.contextmanager
def serve(path: str | Path, n_ctx: int = 256, timeout: float = 120.0) -> Iterator[str]:
    """Start llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) on
    127.0.0.1; yield its base URL; stop it on exit.

    The server binds a port the system picks (port 0) and holds it from then on; the port is
    read back from its log. Before the URL is handed back, the server there must list the model
    under a name made up for this call (``--model_alias``): proof that the answer comes from the
    process started here, not from another program.

    Raises:
        RuntimeError: the server exited, or something else answered.
        TimeoutError: it did not answer within ``timeout`` seconds.
    """
    alias = f"course-{secrets.token_hex(8)}"
    cmd = _server_command(path, alias, n_ctx)
    # its log goes to a file: a pipe nobody reads fills up (64 KiB) and the server then blocks
    # on its next write, which a real model's load log reaches
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True, env=_server_env()
            )
        try:
            yield _wait_until_ours(proc, log, alias, time.monotonic() + timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def post_json(url: str, payload: dict, timeout: float = 120.0) -> dict:
    """POST ``payload`` as JSON to ``url`` and return the decoded JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
