"""Same module names as orders/ (app.py, utils.py), different code."""

import utils


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    return {"app": "payments", "utils": utils.WHO, "file": __file__}
