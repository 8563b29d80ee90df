"""`sam init` layout: app.lambda_handler, with a sibling module imported by name."""

import utils


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    return {"app": "orders", "utils": utils.WHO, "file": __file__}
