"""`esm import` of Kafka (MSK, self-managed) and Amazon MQ mappings: the generated tables are
parsed by the families' own config parsers (esm/config.py does not route to them yet)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from esm.cli import main
from esm.config import _Table
from esm.errors import ConfigError
from esm.importer import ImportResult, import_template
from esm.sources.kafka.config import KafkaMappingConfig, parse_kafka_mapping
from esm.sources.mq.config import MqMappingConfig, parse_mq_table

CLUSTER = "arn:aws:kafka:us-east-1:123456789012:cluster/orders/abcd1234-ab12-cd34-ef56-abcdef12-1"
BROKER = "arn:aws:mq:us-east-1:123456789012:broker:jobs:b-1234a5b6-78cd-901e-2fgh-3i45j6k178l9"
KAFKA_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf"
MQ_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mq-GhIjKl"
CA_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ca-MnOpQr"
FAILURES = "arn:aws:sqs:us-east-1:123456789012:failures"
PARAMS = {"Cluster": CLUSTER, "BrokerArn": BROKER, "KafkaSecret": KAFKA_SECRET}

SAM = """\
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: {Type: String, Default: dev}
  OrdersBatch: {Type: Number, Default: 500}
  MqSecretArn: {Type: String, Default: "@MQ_SECRET@"}
Resources:
  KafkaSecret: {Type: AWS::SecretsManager::Secret}
  Cluster: {Type: AWS::MSK::Cluster}
  Broker: {Type: AWS::AmazonMQ::Broker}
  Consumer:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      CodeUri: src/
      Events:
        Orders:
          Type: MSK
          Properties:
            Stream: !Ref Cluster
            Topics: [orders]
            StartingPosition: TRIM_HORIZON
            ConsumerGroupId: !Sub "orders-${Stage}"
            BatchSize: !Ref OrdersBatch
            MaximumBatchingWindowInSeconds: 2
            MaximumRetryAttempts: 3
            BisectBatchOnFunctionError: true
            FunctionResponseTypes: [ReportBatchItemFailures]
            SourceAccessConfigurations:
              - {Type: SASL_SCRAM_512_AUTH, URI: !Ref KafkaSecret}
            FilterCriteria:
              Filters: [{Pattern: '{"value": {"kind": ["order"]}}'}]
            DestinationConfig: {OnFailure: {Destination: "@FAILURES@"}}
        Clicks:
          Type: SelfManagedKafka
          Properties:
            KafkaBootstrapServers: [kafka1.example.com:9092, kafka2.example.com:9092]
            Topics: [clicks]
            StartingPosition: AT_TIMESTAMP
            StartingPositionTimestamp: 1735689600
            ConsumerGroupId: clicks-group
            SourceAccessConfigurations:
              - {Type: BASIC_AUTH, URI: "@KAFKA_SECRET@"}
              - {Type: SERVER_ROOT_CA_CERTIFICATE, URI: "@CA_SECRET@"}
              - {Type: VPC_SUBNET, URI: "subnet:subnet-0123"}
            KmsKeyArn: arn:aws:kms:us-east-1:123456789012:key/1234
            SchemaRegistryConfig: {SchemaRegistryURI: "https://registry.example.com"}
        Jobs:
          Type: MQ
          Properties:
            Broker: !GetAtt Broker.Arn
            Queues: [jobs]
            BatchSize: "50"
            MaximumBatchingWindowInSeconds: 1
            DynamicPolicyName: true
            SourceAccessConfigurations:
              - {Type: BASIC_AUTH, URI: !Ref MqSecretArn}
              - {Type: VIRTUAL_HOST, URI: /prod}
            FilterCriteria:
              Filters: [{Pattern: {data: {kind: [job]}}}]
"""

CFN = """\
Parameters:
  Servers: {Type: CommaDelimitedList, Default: "k1.internal:9094,k2.internal:9094"}
Resources:
  Handler:
    Type: AWS::Lambda::Function
    Properties: {Runtime: python3.12, Handler: app.handler, Code: src/}
  Cluster: {Type: AWS::MSK::Cluster}
  Broker: {Type: AWS::AmazonMQ::Broker}
  SelfManaged:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      SelfManagedEventSource:
        Endpoints: {KafkaBootstrapServers: !Ref Servers}
      Topics: [payments]
      StartingPosition: LATEST
      SelfManagedKafkaEventSourceConfig: {ConsumerGroupId: payments-esm}
      SourceAccessConfigurations:
        - {Type: SASL_SCRAM_256_AUTH, URI: "@KAFKA_SECRET@"}
      MaximumRecordAgeInSeconds: 3600
      DestinationConfig: {OnFailure: {Destination: "kafka://payments-failed"}}
  Managed:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !GetAtt Handler.Arn
      EventSourceArn: !Ref Cluster
      Topics: [orders]
      StartingPosition: TRIM_HORIZON
      AmazonManagedKafkaEventSourceConfig: {ConsumerGroupId: orders-esm}
      SourceAccessConfigurations:
        - {Type: CLIENT_CERTIFICATE_TLS_AUTH, URI: "@KAFKA_SECRET@"}
  Queue:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      EventSourceArn: !GetAtt Broker.Arn
      Queues: [jobs]
      Enabled: "false"
      SourceAccessConfigurations:
        - {Type: BASIC_AUTH, URI: "@MQ_SECRET@"}
"""


TOKENS = {
    "@CLUSTER@": CLUSTER,
    "@BROKER@": BROKER,
    "@KAFKA_SECRET@": KAFKA_SECRET,
    "@MQ_SECRET@": MQ_SECRET,
    "@CA_SECRET@": CA_SECRET,
    "@FAILURES@": FAILURES,
}


def imported(tmp_path: Path, text: str, params: dict[str, str] | None = None) -> ImportResult:
    """Import `text` (with its @TOKEN@s filled in) as tmp_path/template.yaml."""
    for token, value in TOKENS.items():
        text = text.replace(token, value)
    template = tmp_path / "template.yaml"
    template.write_text(text, encoding="utf-8")
    return import_template(template, PARAMS if params is None else params, output_dir=tmp_path)


def tables(result: ImportResult) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The written mappings by name (read back from the TOML text) and the function names."""
    document = tomllib.loads(result.text)
    return {m["name"]: m for m in document["mappings"]}, set(document["functions"])


def kafka(
    table: dict[str, Any], functions: set[str]
) -> tuple[KafkaMappingConfig | None, list[str]]:
    problems: list[str] = []
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), functions)
    return config, problems


def mq(table: dict[str, Any], functions: set[str]) -> MqMappingConfig:
    return parse_mq_table(table, "mappings[0]", functions)


def test_sam_msk_event_becomes_a_kafka_mapping_the_family_accepts(tmp_path: Path) -> None:
    by_name, functions = tables(imported(tmp_path, SAM))
    config, problems = kafka(by_name["ConsumerOrders"], functions)
    assert problems == []
    assert config is not None
    assert (config.cluster_arn, config.event_source, config.topic) == (
        CLUSTER,
        "aws:kafka",
        "orders",
    )
    assert config.bootstrap_servers == ()  # MSK: brokers from GetBootstrapBrokers
    assert config.consumer_group_id == "orders-dev"  # !Sub with a parameter default
    assert (config.batch_size, config.maximum_batching_window_in_seconds) == (500, 2)
    assert config.starting_position == "TRIM_HORIZON"
    assert (config.maximum_retry_attempts, config.bisect_batch_on_function_error) == (3, True)
    assert config.function_response_types == frozenset({"ReportBatchItemFailures"})
    assert [(a.type, str(a.uri)) for a in config.access] == [
        ("SASL_SCRAM_512_AUTH", f"secretsmanager:{KAFKA_SECRET}")  # the ARN, never a value
    ]
    assert config.filter_patterns == ('{"value": {"kind": ["order"]}}',)
    assert config.on_failure_destination == FAILURES


def test_sam_self_managed_kafka_event_names_its_brokers(tmp_path: Path) -> None:
    result = imported(tmp_path, SAM)
    by_name, functions = tables(result)
    table = by_name["ConsumerClicks"]
    assert "event_source_arn" not in table
    config, problems = kafka(table, functions)
    assert problems == []
    assert config is not None
    assert config.cluster_arn is None and config.event_source == "SelfManagedKafka"
    assert config.bootstrap_servers == ("kafka1.example.com:9092", "kafka2.example.com:9092")
    assert (config.topic, config.consumer_group_id) == ("clicks", "clicks-group")
    assert config.starting_position == "AT_TIMESTAMP"
    assert config.starting_position_timestamp == datetime(2025, 1, 1, tzinfo=UTC)
    assert [(a.type, a.uri.location) for a in config.access] == [
        ("BASIC_AUTH", KAFKA_SECRET),
        ("SERVER_ROOT_CA_CERTIFICATE", CA_SECRET),
    ]
    text = "\n".join(result.report)
    for expected in (
        "Consumer.Events.Clicks.SourceAccessConfigurations[2]: VPC_SUBNET not carried over",
        "Consumer.Events.Clicks.KmsKeyArn: not carried over",
        "Consumer.Events.Clicks.SchemaRegistryConfig: not carried over (schema registries",
    ):
        assert expected in text


def test_sam_mq_event_becomes_a_broker_queue_mapping_the_family_accepts(tmp_path: Path) -> None:
    result = imported(tmp_path, SAM)
    by_name, functions = tables(result)
    config = mq(by_name["ConsumerJobs"], functions)
    assert (config.broker_arn, config.queue, config.function) == (BROKER, "jobs", "Consumer")
    assert (config.batch_size, config.maximum_batching_window_in_seconds) == (50, 1)
    assert config.credentials is not None
    assert (config.credentials.kind, config.credentials.location) == ("secret", MQ_SECRET)
    assert config.virtual_host == "/prod"
    assert config.filter_patterns == ('{"data":{"kind":["job"]}}',)
    assert any(
        line.startswith("Consumer.Events.Jobs.DynamicPolicyName: ignored") for line in result.report
    )
    assert not result.placeholders
    assert "Consumer: function without" not in "\n".join(result.report)


def test_cloudformation_kafka_and_mq_mappings(tmp_path: Path) -> None:
    result = imported(tmp_path, CFN)
    by_name, functions = tables(result)
    assert functions == {"Handler"}
    self_managed, problems = kafka(by_name["SelfManaged"], functions)
    assert problems == []
    assert self_managed is not None
    assert self_managed.bootstrap_servers == ("k1.internal:9094", "k2.internal:9094")
    assert (self_managed.topic, self_managed.consumer_group_id) == ("payments", "payments-esm")
    assert self_managed.starting_position == "LATEST"
    assert self_managed.maximum_record_age_in_seconds == 3600
    assert self_managed.on_failure_destination == "kafka://payments-failed"
    assert [a.type for a in self_managed.access] == ["SASL_SCRAM_256_AUTH"]
    managed, problems = kafka(by_name["Managed"], functions)
    assert problems == []
    assert managed is not None
    assert (managed.cluster_arn, managed.consumer_group_id) == (CLUSTER, "orders-esm")
    assert [a.type for a in managed.access] == ["CLIENT_CERTIFICATE_TLS_AUTH"]
    queue = mq(by_name["Queue"], functions)
    assert (queue.broker_arn, queue.queue, queue.enabled) == (BROKER, "jobs", False)
    assert queue.credentials is not None and queue.credentials.location == MQ_SECRET
    assert not result.placeholders


def test_properties_that_do_not_apply_to_the_family_are_reported(tmp_path: Path) -> None:
    text = """\
Resources:
  Handler:
    Type: AWS::Lambda::Function
    Properties: {Runtime: python3.12, Handler: app.handler, Code: src/}
  Jobs:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      EventSourceArn: "@BROKER@"
      Queues: [jobs]
      StartingPosition: LATEST
      FunctionResponseTypes: [ReportBatchItemFailures]
      DestinationConfig: {OnFailure: {Destination: "@FAILURES@"}}
      SourceAccessConfigurations:
        - {Type: SASL_SCRAM_512_AUTH, URI: "@KAFKA_SECRET@"}
  Orders:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      EventSourceArn: "@CLUSTER@"
      Topics: [orders]
      StartingPosition: LATEST
      ParallelizationFactor: 4
      ScalingConfig: {MaximumConcurrency: 5}
      SelfManagedKafkaEventSourceConfig: {ConsumerGroupId: wrong-kind}
      SourceAccessConfigurations:
        - {Type: BASIC_AUTH, URI: "@KAFKA_SECRET@"}
"""
    result = imported(tmp_path, text, {})
    report = "\n".join(result.report)
    for expected in (
        "Jobs.StartingPosition: applies to Kinesis, DynamoDB, Kafka sources only; "
        "not carried over for Amazon MQ",
        "Jobs.FunctionResponseTypes: applies to",
        "Jobs.DestinationConfig: applies to Kinesis, DynamoDB, Kafka sources only; not carried "
        "over for Amazon MQ; use the broker's dead-letter queue",
        "Jobs.SourceAccessConfigurations[0]: type 'SASL_SCRAM_512_AUTH'",
        "Orders.ParallelizationFactor: applies to Kinesis, DynamoDB sources only",
        "Orders.ScalingConfig: applies to SQS sources only; not carried over for Kafka",
        "Orders.SelfManagedKafkaEventSourceConfig: not carried over (applies to self-managed "
        "Kafka only)",
        "Orders.SourceAccessConfigurations[0]: type 'BASIC_AUTH'",
    ):
        assert expected in report, expected
    by_name, functions = tables(result)
    assert mq(by_name["Jobs"], functions).credentials is None
    config, problems = kafka(by_name["Orders"], functions)
    assert problems == [] and config is not None
    assert config.access == ()


def test_missing_and_unresolved_values_are_placeholders_the_parser_rejects_by_key(
    tmp_path: Path,
) -> None:
    text = """\
Resources:
  Secret: {Type: AWS::SecretsManager::Secret}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      Events:
        Clicks:
          Type: SelfManagedKafka
          Properties:
            Topics: [clicks]
            SourceAccessConfigurations:
              - {Type: BASIC_AUTH, URI: !Ref Secret}
"""
    result = imported(tmp_path, text, {})
    assert result.placeholders == [
        "mappings[0].self_managed_event_source.endpoints.KAFKA_BOOTSTRAP_SERVERS[0]",
        "mappings[0].source_access_configurations[0].uri",
        "mappings[0].starting_position",
    ]
    by_name, functions = tables(result)
    config, problems = kafka(by_name["FnClicks"], functions)
    assert config is None
    joined = "\n".join(problems)
    assert "KAFKA_BOOTSTRAP_SERVERS[0]: <unresolved: Fn.Events.Clicks without Kafka" in joined
    assert "source_access_configurations[0].uri: <unresolved: !Ref Secret" in joined
    assert "mappings[0].starting_position: <unresolved: Fn.Events.Clicks without Start" in joined


def test_an_mq_mapping_without_queues_is_reported_and_the_parser_names_the_key(
    tmp_path: Path,
) -> None:
    text = """\
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: app.handler
      Events:
        Jobs: {Type: MQ, Properties: {Broker: "@BROKER@"}}
"""
    result = imported(tmp_path, text, {})
    assert any("Fn.Events.Jobs: no Queues; Lambda requires exactly one" in r for r in result.report)
    by_name, functions = tables(result)
    with pytest.raises(ConfigError, match=r"mappings\[0\]\.queues: must be a list of exactly one"):
        mq(by_name["FnJobs"], functions)


def test_import_help_says_what_cluster_broker_and_secret_refs_expect(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = capsys.readouterr().out
    assert "Cluster=arn:aws:kafka:" in text
    assert "BrokerArn=arn:aws:mq:" in text
    assert "Secret=arn:aws:secretsmanager:" in text


def test_an_unresolved_source_arn_takes_its_family_from_the_resource_it_names(
    tmp_path: Path,
) -> None:
    text = """\
Resources:
  Handler:
    Type: AWS::Lambda::Function
    Properties: {Runtime: python3.12, Handler: app.handler, Code: src/}
  Cluster: {Type: AWS::MSK::Cluster}
  Broker: {Type: AWS::AmazonMQ::Broker}
  Orders:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      EventSourceArn: !GetAtt Cluster.Arn
      Topics: [orders]
      StartingPosition: LATEST
      AmazonManagedKafkaEventSourceConfig: {ConsumerGroupId: orders-esm}
  Jobs:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Handler
      EventSourceArn: !GetAtt Broker.Arn
      Queues: [jobs]
"""
    result = imported(tmp_path, text, {})
    assert result.placeholders == ["mappings[0].event_source_arn", "mappings[1].event_source_arn"]
    by_name, functions = tables(result)
    orders, jobs = by_name["Orders"], by_name["Jobs"]
    assert orders["amazon_managed_kafka_event_source_config"] == {"consumer_group_id": "orders-esm"}
    assert "self_managed_event_source" not in orders
    assert jobs["queues"] == ["jobs"]
    config, problems = kafka(orders, functions)
    assert config is None
    # The first problem names the key; the Kafka parser then reads the mapping as self-managed.
    assert problems[0] == (
        "mappings[0].event_source_arn: <unresolved: !GetAtt Cluster.Arn - pass --param "
        "ClusterArn=... or --stack-name> is a placeholder left by esm import: set the real value"
    )
    with pytest.raises(
        ConfigError, match=r"event_source_arn: <unresolved: !GetAtt Broker\.Arn.* is a placeholder"
    ):
        mq(jobs, functions)
