"""The kit's embedded runtime: llama.cpp's server behind Ollama's API, and its launcher."""

from labkit.runtime.launcher import (
    CHAT_MODEL,
    DEFAULT_PORT,
    EMBED_MODEL,
    START_TIMEOUT,
    RuntimeRecord,
    chat_model_path,
    down,
    embed_model_path,
    free_port,
    home,
    log_path,
    port_free,
    read_record,
    record_path,
    up,
    write_record,
)

__all__ = [
    "CHAT_MODEL",
    "DEFAULT_PORT",
    "EMBED_MODEL",
    "START_TIMEOUT",
    "RuntimeRecord",
    "chat_model_path",
    "down",
    "embed_model_path",
    "free_port",
    "home",
    "log_path",
    "port_free",
    "read_record",
    "record_path",
    "up",
    "write_record",
]
