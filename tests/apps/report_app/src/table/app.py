import json
import os

from tabulate import tabulate


def handler(event, context):
    rows = [[r["body"], len(r["body"])] for r in event["Records"]]
    with open(os.environ["OUT_FILE"], "a") as out:
        for row in rows:
            line = tabulate([row], tablefmt="plain")
            out.write(
                json.dumps(
                    {
                        "by": "table",
                        "line": line,
                        "pid": os.getpid(),
                        "only_table": os.environ.get("ONLY_TABLE"),
                    }
                )
                + "\n"
            )
