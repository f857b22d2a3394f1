"""Logging: text for terminals, JSON lines for machines, optional rotating file.

JSON lines carry ``ts``, ``level``, ``logger`` and ``msg`` (plus any ``extra=`` fields), so the
runbook's ``jq 'select(.level == "ERROR")'`` works on ``docker logs``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    file: Path | None = None,
    *,
    max_bytes: int = 50 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """(Re)configure the ``ian`` and ``uvicorn`` loggers; safe to call again (SIGHUP)."""
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups)
        )
    for h in handlers:
        h.setFormatter(formatter)
    for name in ("ian", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        for h in handlers if name == "ian" else handlers[:1] + handlers[1:]:
            logger.addHandler(h)
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True


def set_level(level: str) -> None:
    for name in ("ian", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level.upper())
