import json
import os

import humanize


def handler(event, context):
    with open(os.environ["OUT_FILE"], "a") as out:
        for record in event["Records"]:
            line = humanize.intcomma(int(record["body"]))
            out.write(
                json.dumps(
                    {
                        "by": "count",
                        "line": line,
                        "pid": os.getpid(),
                        "only_table": os.environ.get("ONLY_TABLE"),
                    }
                )
                + "\n"
            )
