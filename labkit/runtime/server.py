"""The embedded runtime process: llama.cpp for chat and embeddings, Ollama's dialect in front.

Run by ``labkit up`` as ``python -m labkit.runtime.server --port N --state-dir DIR``; not meant to be
imported by notebooks. It writes ``runtime.json`` once everything answers, and removes it
when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import requests

from labkit import runtime
from labkit.errors import RuntimeStartError

PROMPT_CACHE_MIB = 128  # about three full 2048-token contexts of the chat model
HEADER_TIMEOUT = 15.0  # seconds a connection may take to send a whole request head


def start_llama(model: Path, alias: str, *, embedding: bool, threads: int, api_key: str) -> Any:
    """Start one llama.cpp server on a free loopback port; returns the xllamacpp.Server."""
    import xllamacpp  # imported here: only the runtime process needs the native library

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {alias}  # a set: a model may have several names
    params.port = 0  # let the OS pick; nobody talks to llama.cpp directly but the dialect
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.endpoint_metrics = True
    # Only the front may use llama.cpp: it alone sends the key, and no web page gets a CORS
    # answer (a browser cannot send the key without one).
    params.api_keys = [api_key]
    params.cors_origins = ""
    params.cors_credentials = False
    # llama.cpp keeps finished prompts in RAM to reuse them, up to 8 GB by default: memory a
    # long-running runtime takes and never gives back. A few contexts' worth is plenty here.
    params.cache_ram_mib = 0 if embedding else PROMPT_CACHE_MIB
    if embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        # Four slots of 512 tokens (MiniLM's maximum); a whole input must fit one batch.
        params.n_ctx = 2048
        params.n_parallel = 4
        params.n_batch = 2048
        params.n_ubatch = 512
    else:
        # Four slots share the context: 2048 tokens each, enough for the course's prompts.
        params.n_ctx = 8192
        params.n_parallel = 4
    return xllamacpp.Server(params)


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    """Poll llama.cpp's /health until it says ok."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/health", timeout=2).ok:
                return
        time.sleep(0.05)
    raise RuntimeStartError(f"llama.cpp at {url} did not become healthy in {timeout:.0f} s")


async def serve(port: int, state_dir: Path, threads: int) -> None:
    """Start everything, publish the record, and serve until SIGTERM or SIGINT."""
    from aiohttp import web

    from labkit.runtime.app import create_app
    from labkit.runtime.common import Backend

    chat_path, embed_path = runtime.chat_model_path(), runtime.embed_model_path()
    lock = runtime.hold_lock(state_dir)  # one runtime per folder; held until this process ends
    key = secrets.token_urlsafe(32)
    chat = start_llama(chat_path, runtime.CHAT_MODEL, embedding=False, threads=threads, api_key=key)
    embed = start_llama(
        embed_path, runtime.EMBED_MODEL, embedding=True, threads=threads, api_key=key
    )
    for server in (chat, embed):
        wait_healthy(server.listening_address)

    backend = Backend(
        llama_url=chat.listening_address,
        embed_url=embed.listening_address,
        chat_model=runtime.CHAT_MODEL,
        embed_model=runtime.EMBED_MODEL,
        chat_model_path=chat_path,
        embed_model_path=embed_path,
        api_key=key,
    )
    # keepalive_timeout also closes a new connection that sends no whole request in time:
    # a client that sends half its headers and waits does not hold a connection for long.
    app_runner = web.AppRunner(
        create_app(backend), access_log=None, keepalive_timeout=HEADER_TIMEOUT
    )
    await app_runner.setup()
    try:
        await web.TCPSite(app_runner, "127.0.0.1", port).start()
    except OSError as exc:
        raise RuntimeStartError(f"Cannot listen on 127.0.0.1:{port}: {exc}") from exc

    record = runtime.RuntimeRecord(
        pid=os.getpid(),
        url=f"http://127.0.0.1:{port}",
        llama_url=chat.listening_address,
        embed_url=embed.listening_address,
        models=[runtime.CHAT_MODEL, runtime.EMBED_MODEL],
        log=str(runtime.log_path(state_dir)),
        started=time.time(),
        api_key=key,
    )
    runtime.write_record(record, state_dir)
    runtime.publish_lock(lock, record)
    print(f"labkit runtime ready at {record.url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(OSError):
            if (runtime.read_record(state_dir) or record).pid == record.pid:
                runtime.record_path(state_dir).unlink(missing_ok=True)
        await app_runner.cleanup()
        del chat, embed  # the llama.cpp servers stop when their objects go
        lock.close()
    print("labkit runtime stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the runtime process."""
    parser = argparse.ArgumentParser(prog="python -m labkit.runtime.server")
    parser.add_argument("--port", type=int, default=runtime.DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=runtime.home())
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 2))
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.state_dir, args.threads))
    except RuntimeStartError as exc:
        print(f"labkit runtime failed to start: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
