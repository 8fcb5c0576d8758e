"""Logging: one line per record on stderr, JSON (LOG_FORMAT=json) or plain text.

A JSON line carries `ts` (UTC), `level`, `logger`, `message`, `pid`, the id of the
request being served when there is one (`request_id`, from a context variable the
request middleware sets), a formatted traceback as `exc`, and the fields a record was
given as `extra={"fields": {...}}` (the per-request line of exchange/observability.py).
uvicorn's own loggers are routed here too, so the stream stays one format.
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
from contextvars import ContextVar
from typing import Any

import msgspec

# The request being served by this task (set by the request middleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return _encode(line).decode()

    def _timestamp(self, created: float) -> str:  # float-ok: a time
        # strftime once per second; a log line per request must stay cheap.
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-11-24 23:10:00,123 INFO exchange.access: request method=GET path=/health ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += "".join(f" {name}={value}" for name, value in fields.items() if value is not None)
        request_id = REQUEST_ID.get()
        if request_id is not None and not (fields and "request_id" in fields):
            text += f" request_id={request_id}"
        return text


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A dictConfig for the whole process, uvicorn's loggers included (uvicorn.run takes it)."""
    formatter = TextFormatter if log_format == "text" else JsonFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # Through the root handler, in the same format (uvicorn gives them their own).
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # Off: exchange.access writes one line per request instead.
            "uvicorn.access": {"handlers": [], "propagate": False},
            # httpx logs every request at INFO: one line per price poll is noise.
            "httpx": {"level": max("WARNING", level.upper(), key=logging.getLevelName)},
        },
    }


def configure_logging(level: str, log_format: str) -> None:
    logging.config.dictConfig(logging_config(level, log_format))


def log_format_from_env() -> str:
    """LOG_FORMAT before the settings are read (their check may log); json unless text."""
    return "text" if os.environ.get("LOG_FORMAT", "").strip().lower() == "text" else "json"
