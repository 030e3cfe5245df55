"""One logging configuration for the parent, every worker and every CLI command.

uvicorn applies `log_config` in each worker process it starts, so a worker's access lines and
warnings reach stderr like the parent's. uvicorn's own access log stays off: ours
(app.RequestContextMiddleware) logs paths without query strings, which hold patient data.
"""

from __future__ import annotations

import logging.config
from typing import Any

__all__ = ["configure_logging", "log_config"]

_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: our loggers and uvicorn's at `level`."""
    upper = "DEBUG" if level.lower() == "trace" else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": _FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "dicomweb_server": {"level": upper},
            "uvicorn": {"level": upper},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"level": "WARNING", "propagate": False, "handlers": []},
        },
        "root": {
            "level": "WARNING" if upper in ("INFO", "DEBUG") else upper,
            "handlers": ["stderr"],
        },
    }


def configure_logging(level: str) -> None:
    """Apply `log_config(level)` to this process."""
    logging.config.dictConfig(log_config(level))
