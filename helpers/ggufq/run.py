"""Run a GGUF file in llama.cpp through ``llama-cpp-python``: greedy decoding token by token,
perplexity from llama.cpp's own logits, and its OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(path: str | Path, port: int, n_ctx: int) -> list[str]:
    """llama-cpp-python's server on 127.0.0.1:``port`` for the file, 2 CPU threads."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2"]  # fmt: skip


@contextlib.contextmanager
def serve(path: str | Path, n_ctx: int = 256, timeout: float = 120.0) -> Iterator[str]:
    """Start llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) on
    127.0.0.1 and a free port; yield its base URL; stop it on exit."""
    port = _free_port()
    cmd = _server_command(path, port, n_ctx)
    # its log goes to a file: a pipe nobody reads fills up (64 KiB) and the server then blocks
    # on its next write, which a real model's load log reaches
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited: {log.read()[-2000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/v1/models", timeout=2).close()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not answer on {url} in {timeout} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def post_json(url: str, payload: dict, timeout: float = 120.0) -> dict:
    """POST ``payload`` as JSON to ``url`` and return the decoded JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
