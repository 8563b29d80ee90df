"""A handler that takes over the process's logging at import, as Lambda code often does.

LOGGING_STYLE picks how: `basicconfig` (logging.basicConfig(force=True) at DEBUG on stdout),
`handlers` (replaces the root logger's handlers, DEBUG), or `powertools` (a Powertools
Logger at DEBUG plus `logging.getLogger().setLevel(logging.INFO)`, Lambda's usual recipe).
Each invocation appends the bodies to RECORD_PATH and logs one line of its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

STYLE = os.environ["LOGGING_STYLE"]
if STYLE == "basicconfig":
    logging.basicConfig(
        level=logging.DEBUG,
        force=True,
        stream=sys.stdout,
        format="%(levelname)s %(name)s: %(message)s",
    )
elif STYLE == "handlers":
    root = logging.getLogger()
    root.handlers = [logging.StreamHandler(sys.stdout)]
    root.setLevel(logging.DEBUG)
elif STYLE == "powertools":
    from aws_lambda_powertools import Logger

    powertools_logger = Logger(service="reconfigurer", level="DEBUG")
    logging.getLogger().setLevel(logging.INFO)
else:
    raise ValueError(f"unknown LOGGING_STYLE {STYLE!r}")

own = logging.getLogger("reconfigurer")


def handle(event: dict[str, Any], context: Any) -> None:
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for record in event["Records"]:
            f.write(json.dumps({"body": record["body"]}) + "\n")
    if STYLE == "powertools":
        powertools_logger.info("reconfigurer handled a batch")
    else:
        own.info("reconfigurer handled a batch")
