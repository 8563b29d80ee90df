// An SQS handler for Node's aws-lambda-ric (tests/integration/test_node_runtime.py):
// records each batch and reports the `fail-` messages as batch item failures.
import { appendFileSync } from "node:fs";

export const handler = async (event, context) => {
  const bodies = event.Records.map((record) => record.body);
  appendFileSync(
    process.env.RECORD_PATH,
    JSON.stringify({
      bodies,
      receive_counts: event.Records.map((r) => r.attributes.ApproximateReceiveCount),
      request_id: context.awsRequestId,
      function_name: context.functionName,
      remaining_ms: context.getRemainingTimeInMillis(),
      pid: process.pid,
      node: process.version,
    }) + "\n",
  );
  const failures = event.Records.filter((record) => record.body.startsWith("fail-"));
  return { batchItemFailures: failures.map((record) => ({ itemIdentifier: record.messageId })) };
};
