"""Imports its sibling at invocation time (inside the handler), not at init."""


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    import lazy_helper

    return {"helper": lazy_helper.WHO}
