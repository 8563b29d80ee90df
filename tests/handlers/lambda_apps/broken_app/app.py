"""A handler whose init fails (a missing dependency): Lambda's Runtime.ImportModuleError."""

import no_such_dependency_esm_test  # noqa: F401


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    return {}
