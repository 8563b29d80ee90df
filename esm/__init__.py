"""esm: self-hosted AWS Lambda event source mappings.

Pollers for SQS queues and Kinesis / DynamoDB Streams shards that batch records the way
Lambda does and call a handler: an in-process Python function today, other kinds later.
"""

__version__ = "0.1.0"
