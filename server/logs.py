"""Logging set-up for `nui serve`: plain text lines or JSON lines (`--log-format json`).

A JSON line holds ts (UTC, ISO 8601), level, logger, message, and the structured fields a call passed
as `extra={"rpc": {...}}` (the access log). Server code logs sizes, ids, codes and timings only, never
audio, transcripts or symptoms, so neither format carries content.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

STRUCTURED_FIELDS = ("rpc",)
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once, from main()."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where logging is set up already (tests)
