"""A sync handler that hangs until a file exists (RELEASE_FILE), then records the message."""

import os
import pathlib
import time


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    release = pathlib.Path(os.environ["RELEASE_FILE"])
    while not release.exists():
        time.sleep(0.02)
    return {}
