"""Logging: one line per record on stderr, JSON (LOG_FORMAT=json) or plain text.

A JSON line carries `ts` (UTC), `level`, `logger`, `message`, `pid`, the id of the
request being served when there is one (`request_id`, from a context variable the
request middleware sets), a formatted traceback as `exc`, and the fields a record was
given as `extra={"fields": {...}}` (the per-request line of exchange/http/middleware.py).
uvicorn's own loggers are routed here too, so the stream stays one format.

Lines are written in blocks (BlockStreamHandler): with a line per request, one write
per line cost a system call each. A WARNING or worse is written at once, with the lines
before it; the rest within FLUSH_SECONDS.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import select
import signal
import threading
import time
from contextvars import ContextVar
from typing import Any

import msgspec

# The request being served by this task (set by the request middleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_encode = msgspec.json.Encoder().encode
# Buffered lines are written at least this often, and once they reach BLOCK_BYTES.
FLUSH_SECONDS = 0.1
# Whole lines, at most this many bytes per write: up to PIPE_BUF, a write to a pipe is
# never split, so the lines of workers sharing one pipe never interleave (a line longer
# than that, a traceback say, is written alone and may be).
BLOCK_BYTES = getattr(select, "PIPE_BUF", 512)

# os.getpid(), read once per process (a forked child reads its own, below).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def skip_unused_record_fields() -> None:
    """Neither format shows the caller's file and line, thread or process name, so
    logging need not look them up for every record (the logging HOWTO, "Optimization");
    JsonFormatter reads the pid once per process."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class BlockStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that gathers lines and writes them in blocks of whole lines: at
    once for a WARNING or worse, else when BLOCK_BYTES are waiting or FLUSH_SECONDS have
    passed (a thread per process). Up to FLUSH_SECONDS of INFO lines are lost if the
    process is killed; an ordinary exit writes them (logging.shutdown)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[tuple[str, int]] = []  # (line, its size in bytes)
        self._bytes = 0
        self._flusher_pid = 0
        self._stopping = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as logging's own handlers do
            self.handleError(record)
            return
        size = len(line) if line.isascii() else len(line.encode())
        self._lines.append((line, size))
        self._bytes += size
        if record.levelno >= logging.WARNING or self._bytes >= BLOCK_BYTES:
            self._write()
        elif self._flusher_pid != _pid:  # none yet in this process
            self._flusher_pid = _pid
            threading.Thread(target=self._flush_often, name="log-flusher", daemon=True).start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self._stopping.set()
        self.flush()
        super().close()

    def _flush_often(self) -> None:
        while not self._stopping.wait(FLUSH_SECONDS):
            self.flush()

    def _write(self) -> None:
        if not self._lines:
            return
        lines, self._lines, self._bytes = self._lines, [], 0
        try:
            block: list[str] = []
            block_bytes = 0
            for line, size in lines:
                if block and block_bytes + size > BLOCK_BYTES:
                    self.stream.write("".join(block))
                    self.stream.flush()
                    block, block_bytes = [], 0
                block.append(line)
                block_bytes += size
            self.stream.write("".join(block))
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a log write must never fail a request
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))


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
            "pid": _pid,
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


# Characters that would break a text line (a forged line after a decoded %0a) or hide
# what follows it: C0 and C1 controls, and Unicode's line and paragraph separators.
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with each character that could break or hide part of a line as an escape
    (`\n`, `\x1b`, `\u2028`): one record stays one line."""
    if text.isprintable():
        return text
    return _UNSAFE_IN_LINE.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def _field_text(value: object) -> str:
    """A field's value as it goes after `name=`: quoted when it holds a space or a quote,
    so a client's value cannot pose as further fields (`path=/x status=200`)."""
    text = escape_controls(str(value))
    if " " in text or '"' in text or not text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class TextFormatter(logging.Formatter):
    """`2026-11-24 23:10:00,123 INFO exchange.access: request method=GET path=/health ...`

    The message and every field are escaped (escape_controls): the JSON format escapes
    them by construction, and the text one must not let a client's value (a path with a
    decoded %0a) write a line of its own. A traceback keeps its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += "".join(
                f" {name}={_field_text(value)}" for name, value in fields.items() if value is not None
            )
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
            "stderr": {
                "class": f"{BlockStreamHandler.__module__}.{BlockStreamHandler.__qualname__}",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
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


def write_logs_before_dying_of(*signums: int) -> None:
    """uvicorn stops gracefully on SIGINT or SIGTERM, then raises the signal again under
    the handler it found at start. SIGTERM's default kills the process on the spot, before
    BlockStreamHandler writes its last lines ("Application shutdown complete."): this
    handler writes them, then dies of the signal as before (same exit status)."""

    def handler(signum: int, _frame: object) -> None:
        logging.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for signum in signums:
        signal.signal(signum, handler)
