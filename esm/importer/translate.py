"""Template resources -> esm config tables: mappings from event source mappings and SAM events,
functions from the functions they call.

Owns which template property becomes which config key, SAM's `Globals`, the kind each
function runs as, what `esm build` must install for it, and the report of every property esm
cannot honour (nothing is dropped silently). Its only I/O is looking at the template's local
directories (a function's `requirements.txt`, a layer's `python/`); files to write (inline
code) are returned, not written. Values come resolved from `intrinsics.Resolver`, and an
unresolved one is written as its placeholder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esm.arns import ArnError
from esm.build import BUILD_DIR
from esm.importer.intrinsics import NO_VALUE, Resolver, Unresolved
from esm.sources.registry import parse_source_arn

SAM_FUNCTION = "AWS::Serverless::Function"
LAMBDA_FUNCTION = "AWS::Lambda::Function"
_LAYER_TYPES = ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")
EVENT_SOURCE_MAPPING = "AWS::Lambda::EventSourceMapping"
_FUNCTION_TYPES = (SAM_FUNCTION, LAMBDA_FUNCTION)
_SAM_EVENT_KINDS = {
    "SQS": "sqs",
    "Kinesis": "kinesis",
    "DynamoDB": "dynamodb",
    "MSK": "kafka",
    "SelfManagedKafka": "kafka",
    "MQ": "mq",
}
_SAM_ARN_KEYS = {
    "SQS": "Queue",
    "Kinesis": "Stream",
    "DynamoDB": "Stream",
    "MSK": "Stream",
    "MQ": "Broker",
}
"""The SAM event property SAM passes as EventSourceArn (SelfManagedKafka has none)."""
_SOURCE_TYPES = {
    "AWS::SQS::Queue": "sqs",
    "AWS::Kinesis::Stream": "kinesis",
    "AWS::DynamoDB::Table": "dynamodb",
    "AWS::MSK::Cluster": "kafka",
    "AWS::MSK::ServerlessCluster": "kafka",
    "AWS::AmazonMQ::Broker": "mq",
}
_NESTED_STACKS = ("AWS::Serverless::Application", "AWS::CloudFormation::Stack")


@dataclass
class Translation:
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    report: list[str] = field(default_factory=list)
    """One line per property, event or resource esm does not carry over, and why."""
    placeholders: list[str] = field(default_factory=list)
    """Key paths written as `<unresolved: ...>`."""
    external_functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Functions mappings name that the template does not define (written after the others)."""
    files: dict[str, str] = field(default_factory=dict)
    """Files to write, by path relative to the output directory (inline code)."""
    builds: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per function, what `esm build` installs (paths relative to the output directory)."""


@dataclass(frozen=True)
class Paths:
    template_dir: Path
    output_dir: Path


def translate(
    template: Mapping[str, Any], resolver: Resolver, paths: Paths, lambda_kind: bool = False
) -> Translation:
    out = Translation()
    resources: Mapping[str, Any] = template["Resources"]
    globals_function = (template.get("Globals") or {}).get("Function") or {}
    for key in sorted(set(template.get("Globals") or {}) - {"Function"}):
        out.report.append(f"Globals.{key}: not used (esm only reads Globals.Function)")
    wanted: list[str] = []
    for logical_id, resource in resources.items():
        if not isinstance(resource, Mapping):
            continue
        kind = resource.get("Type", "")
        if not _included(logical_id, resource, resolver, out):
            continue
        properties = resource.get("Properties") or {}
        if kind == SAM_FUNCTION:
            properties = merge_globals(globals_function, properties)
            for event_name, event in (properties.get("Events") or {}).items():
                event_type = (event or {}).get("Type", "")
                if event_type not in _SAM_EVENT_KINDS:
                    out.report.append(
                        f"{logical_id}.Events.{event_name}: event type {event_type!r} is not an "
                        "event source mapping; esm does not run it"
                    )
                    continue
                where = f"{logical_id}.Events.{event_name}"
                event_props = _sam_event_properties(
                    event_type, dict(event.get("Properties") or {}), where, out
                )
                arn_key = _SAM_ARN_KEYS.get(event_type)
                _add_mapping(
                    out,
                    resolver,
                    f"{logical_id}{event_name}",
                    logical_id,
                    event_props.pop(arn_key, None) if arn_key else None,
                    event_props,
                    _SAM_EVENT_KINDS[event_type],
                    where,
                )
                if logical_id not in wanted:
                    wanted.append(logical_id)
        elif kind == EVENT_SOURCE_MAPPING:
            props = dict(properties)
            source = props.pop("EventSourceArn", None)
            function = _mapping_function(
                props.pop("FunctionName", None), resources, resolver, out, logical_id
            )
            _add_mapping(
                out,
                resolver,
                logical_id,
                function,
                source,
                props,
                _source_kind(source, resources, resolver, props),
                logical_id,
            )
            if isinstance(function, str) and function in resources and function not in wanted:
                wanted.append(function)
        elif kind in _NESTED_STACKS:
            out.report.append(
                f"{logical_id}: nested stack ({kind}) not followed; import its template separately"
            )
    merged: dict[str, Mapping[str, Any]] = {}
    for logical_id in resources:
        if logical_id in wanted:
            resource = resources[logical_id]
            properties = resource.get("Properties") or {}
            if resource.get("Type") == SAM_FUNCTION:
                properties = merge_globals(globals_function, properties)
            merged[logical_id] = properties
    in_process = [] if lambda_kind else [n for n, p in merged.items() if _python_zip(p, resolver)]
    isolate = len(in_process) > 1
    if isolate:
        out.report.append(
            f"{len(in_process)} Python functions ({', '.join(in_process)}) run as "
            'kind = "process": each in its own process with its own code and environment, as '
            'on Lambda (a template with one Python function runs it in-process, kind = "python")'
        )
    for logical_id, properties in merged.items():
        described = _FunctionSource(logical_id, resources[logical_id].get("Type"), properties)
        out.functions[logical_id] = _function(
            described, resolver, paths, lambda_kind, isolate, resources, out
        )
    for logical_id, resource in resources.items():
        if (
            isinstance(resource, Mapping)
            and resource.get("Type") in _FUNCTION_TYPES
            and logical_id not in wanted
            and logical_id not in out.functions
        ):
            out.report.append(
                f"{logical_id}: function without an event source mapping event (SQS, Kinesis, "
                "DynamoDB, MSK, SelfManagedKafka, MQ); not imported"
            )
    for name, entry in out.external_functions.items():
        out.functions.setdefault(name, entry)
    return out


def merge_globals(
    globals_function: Mapping[str, Any], properties: Mapping[str, Any]
) -> dict[str, Any]:
    """SAM's rules: maps merge (the function's keys win), lists are concatenated (globals
    first), any other value of the function replaces the global one."""
    merged: dict[str, Any] = dict(globals_function)
    for key, value in properties.items():
        if key in merged:
            merged[key] = _merge_value(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_value(global_value: Any, value: Any) -> Any:
    if _is_plain_map(global_value) and _is_plain_map(value):
        return merge_globals(global_value, value)
    if isinstance(global_value, list) and isinstance(value, list):
        return global_value + value
    return value


def _is_plain_map(value: Any) -> bool:
    """A map SAM merges, not an intrinsic (`{"Fn::If": ...}` replaces the global value)."""
    if not isinstance(value, Mapping):
        return False
    if len(value) != 1:
        return True
    only = str(next(iter(value)))
    return only != "Ref" and not only.startswith("Fn::")


def _included(
    logical_id: str, resource: Mapping[str, Any], resolver: Resolver, out: Translation
) -> bool:
    condition = resource.get("Condition")
    if condition is None:
        return True
    outcome = resolver.condition(str(condition))
    if isinstance(outcome, Unresolved):
        if resource.get("Type") in (SAM_FUNCTION, EVENT_SOURCE_MAPPING):
            out.report.append(
                f"{logical_id}: Condition {condition} cannot be evaluated ({outcome.hint}); "
                "imported as if true"
            )
        return True
    return outcome


# -- mappings -------------------------------------------------------------------------------


def _integer(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _boolean(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _text(value: Any) -> Any:
    return value


def _string_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


# CreateEventSourceMapping parameter -> config key, in the order they are written.
_SCALARS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Enabled", "enabled", _boolean),
    ("BatchSize", "batch_size", _integer),
    ("MaximumBatchingWindowInSeconds", "maximum_batching_window_in_seconds", _number),
    ("StartingPosition", "starting_position", _text),
    ("StartingPositionTimestamp", "starting_position_timestamp", _number),
    ("ParallelizationFactor", "parallelization_factor", _integer),
    ("BisectBatchOnFunctionError", "bisect_batch_on_function_error", _boolean),
    ("MaximumRetryAttempts", "maximum_retry_attempts", _integer),
    ("MaximumRecordAgeInSeconds", "maximum_record_age_in_seconds", _integer),
    ("TumblingWindowInSeconds", "tumbling_window_in_seconds", _integer),
    ("FunctionResponseTypes", "function_response_types", _string_list),
)
_STREAMS = ("kinesis", "dynamodb")
_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "StartingPosition": (*_STREAMS, "kafka"),
    "StartingPositionTimestamp": (*_STREAMS, "kafka"),
    "ParallelizationFactor": _STREAMS,
    "BisectBatchOnFunctionError": (*_STREAMS, "kafka"),
    "MaximumRetryAttempts": (*_STREAMS, "kafka"),
    "MaximumRecordAgeInSeconds": (*_STREAMS, "kafka"),
    "TumblingWindowInSeconds": _STREAMS,
    "FunctionResponseTypes": ("sqs", *_STREAMS, "kafka"),
    "DestinationConfig": (*_STREAMS, "kafka"),
    "ScalingConfig": ("sqs",),
}
"""Which sources a CreateEventSourceMapping parameter applies to (Lambda's per-source parameter
tables: with-sqs, with-kinesis, with-ddb, kafka-esm-parameters, with-mq); absent: all of them."""
_KIND_LABELS = {
    "sqs": "SQS",
    "kinesis": "Kinesis",
    "dynamodb": "DynamoDB",
    "kafka": "Kafka",
    "mq": "Amazon MQ",
}
_UNSUPPORTED_REASONS = {
    "KmsKeyArn": "esm keeps no filter criteria encrypted at rest; the key is not used",
    "MetricsConfig": "esm always exposes its metrics on /metrics",
    "ProvisionedPollerConfig": "esm scales its own pollers",
    "Tags": "esm mappings have no tags",
    "Queues": "applies to Amazon MQ sources only",
    "Topics": "applies to Kafka sources only",
    "SourceAccessConfigurations": "applies to Kafka and Amazon MQ sources only",
    "SelfManagedEventSource": "applies to self-managed Kafka only",
    "SelfManagedKafkaEventSourceConfig": "applies to self-managed Kafka only",
    "AmazonManagedKafkaEventSourceConfig": "applies to Amazon MSK only",
    "DocumentDBEventSourceConfig": "DocumentDB sources are not supported",
    "SchemaRegistryConfig": "schema registries are not supported; records reach the function "
    "as the broker holds them",
    "SecretsManagerKmsKeyId": "esm reads the secret with its own credentials; the key is not used",
    "ConsumptionMode": "not supported by esm",
}


_NOT_APPLICABLE_HINTS = {
    ("DestinationConfig", "sqs"): "; use the queue's redrive policy",
    ("DestinationConfig", "mq"): "; use the broker's dead-letter queue",
}


def _not_applicable(prop: str, kind: str) -> str | None:
    """Why `prop` is not carried over for a `kind` mapping, or None when it applies."""
    kinds = _APPLIES_TO.get(prop)
    if kinds is None or kind in kinds:
        return None
    names = ", ".join(_KIND_LABELS[k] for k in kinds)
    hint = _NOT_APPLICABLE_HINTS.get((prop, kind), "")
    return f"applies to {names} sources only; not carried over for {_KIND_LABELS[kind]}{hint}"


def _sam_event_properties(
    event_type: str, props: dict[str, Any], where: str, out: Translation
) -> dict[str, Any]:
    """A SAM event's own properties in the EventSourceMapping shape SAM generates from them
    (SAM guide: sam-property-function-msk, -selfmanagedkafka, -mq)."""
    if event_type in ("MSK", "SelfManagedKafka") and "ConsumerGroupId" in props:
        config = (
            "AmazonManagedKafkaEventSourceConfig"
            if event_type == "MSK"
            else "SelfManagedKafkaEventSourceConfig"
        )
        props[config] = {"ConsumerGroupId": props.pop("ConsumerGroupId")}
    if event_type == "SelfManagedKafka":
        endpoints = {}
        if "KafkaBootstrapServers" in props:
            endpoints["KafkaBootstrapServers"] = props.pop("KafkaBootstrapServers")
        props["SelfManagedEventSource"] = {"Endpoints": endpoints}
    if event_type == "MQ" and "DynamicPolicyName" in props:
        del props["DynamicPolicyName"]
        out.report.append(
            f"{where}.DynamicPolicyName: ignored (it only names the IAM policy SAM generates; "
            "esm reads the broker with its own credentials)"
        )
    return props


_KAFKA_ACCESS = {
    "self_managed": (
        "BASIC_AUTH",
        "SASL_SCRAM_256_AUTH",
        "SASL_SCRAM_512_AUTH",
        "CLIENT_CERTIFICATE_TLS_AUTH",
        "SERVER_ROOT_CA_CERTIFICATE",
    ),
    "msk": ("SASL_SCRAM_512_AUTH", "CLIENT_CERTIFICATE_TLS_AUTH"),
}
"""SourceAccessConfigurations types esm's Kafka family reads (kafka-cluster-auth,
msk-cluster-auth); MSK's IAM auth has no entry."""
_MQ_ACCESS = ("BASIC_AUTH", "VIRTUAL_HOST")
_NETWORK_ACCESS = ("VPC_SUBNET", "VPC_SECURITY_GROUP")


def _broker_keys(
    out: Translation,
    resolver: Resolver,
    props: dict[str, Any],
    entry: dict[str, Any],
    kind: str,
    where: str,
    path: str,
) -> None:
    """Kafka's and Amazon MQ's own parameters (Topics / Queues, SelfManagedEventSource, the
    consumer group config, SourceAccessConfigurations), in the keys the families parse."""
    msk = "event_source_arn" in entry
    if kind == "kafka":
        if not msk:
            servers = _bootstrap_servers(out, resolver, props, where, path)
            entry["self_managed_event_source"] = {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": servers}}
        entry_key, prop = ("topics", "Topics")
    else:
        entry_key, prop = ("queues", "Queues")
    if prop in props:
        names = resolver.resolve(props.pop(prop))
        names = names if isinstance(names, list) else [names]
        entry[entry_key] = [
            _placeholder(out, f"{path}.{entry_key}[{i}]", name) for i, name in enumerate(names)
        ]
    else:
        out.report.append(
            f'{where}: no {prop}; Lambda requires exactly one, set {entry_key} = ["..."]'
        )
    if kind == "kafka":
        _consumer_group(out, resolver, props, entry, msk, where, path)
    if "SourceAccessConfigurations" in props:
        access = _access_configurations(out, resolver, props, kind, msk, where, path)
        if access:
            entry["source_access_configurations"] = access


def _bootstrap_servers(
    out: Translation, resolver: Resolver, props: dict[str, Any], where: str, path: str
) -> list[Any]:
    """SelfManagedEventSource.Endpoints.KafkaBootstrapServers (CloudFormation's spelling of
    the API's KAFKA_BOOTSTRAP_SERVERS); a placeholder when the template has none."""
    key = f"{path}.self_managed_event_source.endpoints.KAFKA_BOOTSTRAP_SERVERS"
    source = resolver.resolve(props.pop("SelfManagedEventSource", None))
    endpoints = source.get("Endpoints") if isinstance(source, dict) else source
    servers = endpoints.get("KafkaBootstrapServers") if isinstance(endpoints, dict) else endpoints
    if isinstance(servers, dict):
        for extra in sorted(servers):
            out.report.append(f"{where}.SelfManagedEventSource.Endpoints.{extra}: not supported")
        servers = None
    if servers is None:
        servers = Unresolved(f"{where} without KafkaBootstrapServers", "add host:port brokers")
    if isinstance(servers, str):
        servers = [part.strip() for part in servers.split(",") if part.strip()]
    if not isinstance(servers, list):
        servers = [servers]
    return [_placeholder(out, f"{key}[{i}]", server) for i, server in enumerate(servers)]


def _consumer_group(
    out: Translation,
    resolver: Resolver,
    props: dict[str, Any],
    entry: dict[str, Any],
    msk: bool,
    where: str,
    path: str,
) -> None:
    """AmazonManagedKafkaEventSourceConfig (MSK) or SelfManagedKafkaEventSourceConfig: the
    ConsumerGroupId; the other one stays in `props` and is reported as not applying."""
    prop = "AmazonManagedKafkaEventSourceConfig" if msk else "SelfManagedKafkaEventSourceConfig"
    if prop not in props:
        return
    config = resolver.resolve(props.pop(prop))
    key = f"{'amazon' if msk else 'self'}_managed_kafka_event_source_config"
    if not isinstance(config, dict):
        entry[key] = {"consumer_group_id": _placeholder(out, f"{path}.{key}", config)}
        return
    for extra in sorted(set(config) - {"ConsumerGroupId"}):
        reason = _UNSUPPORTED_REASONS.get(extra, "not supported by esm")
        out.report.append(f"{where}.{prop}.{extra}: not carried over ({reason})")
    if "ConsumerGroupId" in config:
        group = _placeholder(out, f"{path}.{key}.consumer_group_id", config["ConsumerGroupId"])
        entry[key] = {"consumer_group_id": group}


def _access_configurations(
    out: Translation,
    resolver: Resolver,
    props: dict[str, Any],
    kind: str,
    msk: bool,
    where: str,
    path: str,
) -> list[dict[str, Any]]:
    """`{Type, URI}` -> `{type, uri}`: a secret ARN stays the `uri` (read when the mapping
    starts, never at import); VPC entries do not apply (esm connects from its own network)."""
    where = f"{where}.SourceAccessConfigurations"
    raw = resolver.resolve(props.pop("SourceAccessConfigurations"))
    if isinstance(raw, Unresolved) or not isinstance(raw, list):
        hint = raw.hint if isinstance(raw, Unresolved) else "it is not a list"
        out.report.append(
            f"{where}: cannot be evaluated ({hint}); not carried over, "
            "set source_access_configurations by hand"
        )
        return []
    if kind == "mq":
        allowed: tuple[str, ...] = _MQ_ACCESS
    else:
        allowed = _KAFKA_ACCESS["msk" if msk else "self_managed"]
    result: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        item = item if isinstance(item, dict) else {}
        access_type, uri = item.get("Type"), item.get("URI")
        if access_type in _NETWORK_ACCESS:
            out.report.append(
                f"{where}[{index}]: {access_type} not carried over "
                "(esm connects to the brokers from its own network)"
            )
            continue
        if uri is None and access_type in allowed:
            out.report.append(f"{where}[{index}]: {access_type} without a URI; not carried over")
            continue
        if access_type not in allowed:
            shown = access_type.expression if isinstance(access_type, Unresolved) else access_type
            out.report.append(
                f"{where}[{index}]: type {shown!r} not carried over "
                f"(esm reads {', '.join(allowed)} for {_mapping_label(kind, msk)})"
            )
            continue
        at = f"{path}.source_access_configurations[{len(result)}].uri"
        result.append({"type": access_type, "uri": _placeholder(out, at, uri)})
    return result


def _mapping_label(kind: str, msk: bool) -> str:
    if kind == "kafka":
        return "Amazon MSK" if msk else "self-managed Kafka"
    return _KIND_LABELS[kind]


def _add_mapping(
    out: Translation,
    resolver: Resolver,
    name: str,
    function: str | Unresolved,
    source: Any,
    props: dict[str, Any],
    kind: str,
    where: str,
) -> None:
    for prop in list(props):
        if resolver.resolve(props[prop]) is NO_VALUE:
            del props[prop]
    index = len(out.mappings)
    path = f"mappings[{index}]"
    entry: dict[str, Any] = {"name": name}
    entry["function"] = _placeholder(out, f"{path}.function", function)
    if kind == "kafka" and source is None and "SelfManagedEventSource" in props:
        pass  # self-managed Kafka: its brokers, not an ARN (_broker_keys)
    elif source is None:
        entry["event_source_arn"] = _placeholder(
            out,
            f"{path}.event_source_arn",
            Unresolved(f"{where} without a source ARN", "add it to the template"),
        )
    else:
        entry["event_source_arn"] = _placeholder(
            out, f"{path}.event_source_arn", resolver.resolve(source)
        )
    if kind in ("kafka", "mq"):
        _broker_keys(out, resolver, props, entry, kind, where, path)
    for prop in list(props):
        reason = _not_applicable(prop, kind)
        if reason is not None:
            del props[prop]
            out.report.append(f"{where}.{prop}: {reason}")
    for prop, config_key, convert in _SCALARS:
        if prop not in props:
            continue
        raw = props.pop(prop)
        value = resolver.resolve(raw)
        if value is NO_VALUE:
            continue
        entry[config_key] = _placeholder(
            out, f"{path}.{config_key}", value if isinstance(value, Unresolved) else convert(value)
        )
    if "FilterCriteria" in props:
        criteria = resolver.resolve(props.pop("FilterCriteria"))
        filters = []
        for item in (criteria or {}).get("Filters") or [] if isinstance(criteria, dict) else []:
            pattern = item.get("Pattern") if isinstance(item, dict) else None
            if isinstance(pattern, dict | list):
                pattern = json.dumps(pattern, separators=(",", ":"))
            filters.append({"pattern": _placeholder(out, f"{path}.filter_criteria", pattern)})
        if isinstance(criteria, Unresolved):
            filters.append({"pattern": _placeholder(out, f"{path}.filter_criteria", criteria)})
        if filters:
            entry["filter_criteria"] = {"filters": filters}
    if kind == "kafka" and "starting_position" not in entry:
        entry["starting_position"] = _placeholder(
            out,
            f"{path}.starting_position",
            Unresolved(
                f"{where} without StartingPosition",
                "Lambda requires it for Kafka: set TRIM_HORIZON, LATEST or AT_TIMESTAMP",
            ),
        )
    if "DestinationConfig" in props:
        config = resolver.resolve(props.pop("DestinationConfig"))
        if isinstance(config, dict):
            on_failure = config.get("OnFailure") or {}
            for extra in sorted(set(config) - {"OnFailure"}):
                out.report.append(
                    f"{where}.DestinationConfig.{extra}: not supported "
                    "(esm has on-failure destinations only)"
                )
            if isinstance(on_failure, dict) and "Destination" in on_failure:
                destination = _placeholder(
                    out,
                    f"{path}.destination_config.on_failure.destination",
                    on_failure["Destination"],
                )
                entry["destination_config"] = {"on_failure": {"destination": destination}}
            if isinstance(on_failure, dict) and "Type" in on_failure:
                out.report.append(
                    f"{where}.DestinationConfig.OnFailure.Type: only used by SAM for IAM policies; "
                    "esm infers the service from the destination ARN"
                )
        else:
            entry["destination_config"] = {
                "on_failure": {
                    "destination": _placeholder(out, f"{path}.destination_config", config)
                }
            }
    if "ScalingConfig" in props:
        scaling = resolver.resolve(props.pop("ScalingConfig"))
        if isinstance(scaling, dict) and "MaximumConcurrency" in scaling:
            entry["scaling_config"] = {
                "maximum_concurrency": _placeholder(
                    out,
                    f"{path}.scaling_config.maximum_concurrency",
                    _integer(scaling["MaximumConcurrency"]),
                )
            }
    for prop in props:
        reason = _UNSUPPORTED_REASONS.get(prop, "not supported by esm")
        out.report.append(f"{where}.{prop}: not carried over ({reason})")
    out.mappings.append(entry)


def _placeholder(out: Translation, path: str, value: Any) -> Any:
    if isinstance(value, Unresolved):
        out.placeholders.append(path)
        return value.placeholder()
    return value


def _source_kind(
    source: Any, resources: Mapping[str, Any], resolver: Resolver, props: Mapping[str, Any]
) -> str:
    """Which service a mapping reads: from its ARN if known, else from the type of the
    resource it refers to, else from its Kafka (Topics, SelfManagedEventSource) or Amazon MQ
    (Queues) parameters, else from whether it has a StartingPosition (streams need one)."""
    resolved = resolver.resolve(source)
    service = resolved.split(":")[2:3] if isinstance(resolved, str) else []
    if service in (["kafka"], ["mq"]):
        return service[0]
    if isinstance(resolved, str):
        try:
            return parse_source_arn(resolved).kind
        except ArnError:
            pass
    referenced = _referenced_resource(source)
    if referenced is not None and referenced in resources:
        kind = _SOURCE_TYPES.get(resources[referenced].get("Type", ""))
        if kind:
            return kind
    if "Topics" in props or "SelfManagedEventSource" in props:
        return "kafka"
    if "Queues" in props:
        return "mq"
    return "kinesis" if "StartingPosition" in props else "sqs"


def _referenced_resource(node: Any) -> str | None:
    """The logical id a `Ref` / `Fn::GetAtt` / single-reference `Fn::Sub` points at."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((key, arg),) = node.items()
    if key == "Ref":
        return str(arg)
    if key == "Fn::GetAtt":
        return str(arg[0]) if isinstance(arg, list) else str(arg).split(".", 1)[0]
    if key == "Fn::Sub":
        text = arg[0] if isinstance(arg, list) else arg
        found = re.findall(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z.]+)?\}", str(text))
        return found[0] if len(set(found)) == 1 else None
    return None


def _mapping_function(
    node: Any, resources: Mapping[str, Any], resolver: Resolver, out: Translation, where: str
) -> str | Unresolved:
    """The [functions.*] name of an EventSourceMapping's FunctionName: the logical id of a
    function in the template, or an entry of kind "lambda" for a function defined elsewhere."""
    referenced = _referenced_resource(node)
    if (
        referenced is not None
        and referenced in resources
        and resources[referenced].get("Type") in _FUNCTION_TYPES
    ):
        return referenced
    value = resolver.resolve(node)
    if isinstance(value, Unresolved) or value is None:
        return value or Unresolved(f"{where} without FunctionName", "add it to the template")
    name = str(value)
    for logical_id, resource in resources.items():
        if (
            resource.get("Type") in _FUNCTION_TYPES
            and (resource.get("Properties") or {}).get("FunctionName") == name
        ):
            return logical_id
    short = re.sub(r"[^A-Za-z0-9_-]", "-", name.split(":function:", 1)[-1])
    if short not in out.external_functions:
        out.external_functions[short] = {"kind": "lambda", "function_name": name}
        out.report.append(
            f"{where}.FunctionName: {name!r} is not defined in this template; "
            f'[functions.{short}] invokes it in AWS Lambda (kind = "lambda")'
        )
    return short


# -- functions ------------------------------------------------------------------------------

_HONOURED_FUNCTION_PROPERTIES = frozenset(
    {
        "Runtime",
        "Handler",
        "CodeUri",
        "Code",
        "InlineCode",
        "Timeout",
        "MemorySize",
        "Environment",
        "ReservedConcurrentExecutions",
        "Events",
        "FunctionName",
        "PackageType",
        "Layers",
    }
)
_FUNCTION_REASONS = {
    "Role": "esm calls functions with its own credentials",
    "Policies": "esm calls functions with its own credentials",
    "VpcConfig": "functions run in esm's network",
    "Architectures": "functions run on the host's architecture",
    "Tracing": "X-Ray tracing is not supported",
    "DeadLetterQueue": "asynchronous invocation settings do not apply to event source mappings",
    "EventInvokeConfig": "asynchronous invocation settings do not apply to event source mappings",
    "AutoPublishAlias": "esm runs the code as it is",
    "EphemeralStorage": "functions use the host's temporary directory",
    "FileSystemConfigs": "EFS mounts are not supported",
    "ImageUri": "container images are not supported",
    "ImageConfig": "container images are not supported",
}
_RIC = "the runtime interface client must be installed"


def _process_command(runtime: str, handler: str) -> tuple[list[str] | None, str]:
    """The execution environment's argv for a non-Python runtime, and a note for the report."""
    if runtime.startswith("provided"):
        return ["./bootstrap"], "custom runtime: runs ./bootstrap from code_path"
    if runtime == "go1.x":
        return [f"./{handler}"], "go1.x: runs the handler binary from code_path"
    if runtime.startswith("nodejs"):
        return ["npx", "aws-lambda-ric", handler], f"{_RIC} (npm install aws-lambda-ric)"
    if runtime.startswith("ruby"):
        return ["aws_lambda_ric", handler], f"{_RIC} (gem install aws_lambda_ric)"
    if runtime.startswith("java"):
        return (
            [
                "java",
                "-cp",
                "*:lib/*",
                "com.amazonaws.services.lambda.runtime.api.client.AWSLambda",
                handler,
            ],
            f"{_RIC} (com.amazonaws:aws-lambda-java-runtime-interface-client on the class path)",
        )
    return None, "no known bootstrap command"


@dataclass(frozen=True)
class _FunctionSource:
    logical_id: str
    resource_type: Any
    properties: Mapping[str, Any]
    """With SAM's Globals merged in."""


def _python_zip(properties: Mapping[str, Any], resolver: Resolver) -> bool:
    """A Python function whose code esm runs itself (not a container image)."""
    runtime = resolver.resolve(properties.get("Runtime"))
    package_type = resolver.resolve(properties.get("PackageType"))
    return isinstance(runtime, str) and runtime.startswith("python") and package_type != "Image"


def _function(
    source: _FunctionSource,
    resolver: Resolver,
    paths: Paths,
    lambda_kind: bool,
    isolate: bool,
    resources: Mapping[str, Any],
    out: Translation,
) -> dict[str, Any]:
    logical_id, properties = source.logical_id, source.properties
    path = f"functions.{logical_id}"

    def get(key: str) -> Any:
        return resolver.resolve(properties.get(key))

    runtime = get("Runtime")
    handler = get("Handler")
    entry: dict[str, Any] = {}
    if lambda_kind:
        name = get("FunctionName") if "FunctionName" in properties else resolver.ref(logical_id)
        entry["kind"] = "lambda"
        entry["function_name"] = _placeholder(out, f"{path}.function_name", name)
    elif get("PackageType") == "Image":
        out.report.append(
            f"{logical_id}.PackageType: container images cannot run under esm; use --lambda, "
            'or kind = "process" with the image\'s entrypoint as command'
        )
        entry["kind"] = "lambda"
        entry["function_name"] = _placeholder(
            out, f"{path}.function_name", resolver.ref(logical_id)
        )
    else:
        runtime_text = runtime if isinstance(runtime, str) else ""
        handler_value = (
            _placeholder(out, f"{path}.handler", handler) if handler is not None else None
        )
        if runtime_text.startswith("python"):
            # Several functions: one process each, so each has its own modules and
            # environment variables, as each Lambda function has its own sandbox.
            entry["kind"] = "process" if isolate else "python"
            if (
                isinstance(handler_value, str)
                and "/" in handler_value
                and not isinstance(handler, Unresolved)
            ):
                # Lambda's Python runtime accepts `dir/module.function`; esm imports modules.
                handler_value = handler_value.replace("/", ".")
            if handler_value is not None:
                entry["handler"] = handler_value
        else:
            command, note = _process_command(runtime_text, str(handler_value or ""))
            entry["kind"] = "process"
            if command is None:
                command = [
                    f"<unresolved: no bootstrap command known for runtime "
                    f"{runtime_text or '(none)'} - set command>"
                ]
                out.placeholders.append(f"{path}.command")
            out.report.append(
                f'{logical_id}.Runtime: {runtime_text or "(none)"} runs as kind = "process"; {note}'
            )
            entry["command"] = command
            if handler_value is not None:
                entry["handler"] = handler_value
        code_path, local = _code_path(source, runtime_text, handler, resolver, paths, out)
        entry["code_path"] = code_path
        if runtime_text.startswith("python"):
            layers = _layers(source, resolver, resources, paths, out)
            build = _build_entry(logical_id, entry["kind"], local, layers, paths)
            if local is None and layers:
                out.report.append(
                    f"{logical_id}.Layers: not carried over (the function's code is not local, "
                    "so esm build has no package to put them in)"
                )
            if build is not None:
                out.builds[logical_id] = build
                entry["code_path"] = build["package"]
        elif "Layers" in properties:
            out.report.append(
                f"{logical_id}.Layers: not carried over (esm builds layers for Python functions "
                "only); put their content where the runtime finds it"
            )
    _function_settings(logical_id, entry, get, out)
    for prop in properties:
        if prop not in _HONOURED_FUNCTION_PROPERTIES:
            reason = _FUNCTION_REASONS.get(prop, "not supported by esm")
            out.report.append(f"{logical_id}.{prop}: not carried over ({reason})")
        elif prop == "Layers" and entry["kind"] == "lambda":
            out.report.append(f"{logical_id}.Layers: set on the deployed function, not by esm")
    return entry


def _function_settings(
    logical_id: str, entry: dict[str, Any], get: Callable[[str], Any], out: Translation
) -> None:
    """Timeout, MemorySize, Environment and ReservedConcurrentExecutions."""
    path = f"functions.{logical_id}"
    timeout = get("Timeout")
    if timeout is not None:
        entry["timeout"] = _placeholder(out, f"{path}.timeout", _number(timeout))
    memory = get("MemorySize")
    if memory is not None:
        if entry["kind"] == "lambda":
            out.report.append(f"{logical_id}.MemorySize: set on the deployed function, not by esm")
        else:
            entry["memory_size"] = _placeholder(out, f"{path}.memory_size", _integer(memory))
    environment = get("Environment")
    if environment is not None:
        variables = environment.get("Variables") if isinstance(environment, dict) else environment
        if entry["kind"] == "lambda":
            out.report.append(f"{logical_id}.Environment: set on the deployed function, not by esm")
        elif isinstance(variables, dict):
            env: dict[str, str] = {}
            for name, value in variables.items():
                if isinstance(value, Unresolved):
                    out.report.append(
                        f"{path}.environment.{name}: placeholder written ({value.hint}); "
                        "esm validate does not check environment values"
                    )
                env[str(name)] = _placeholder(out, f"{path}.environment.{name}", _env_text(value))
            entry["environment"] = env
        else:
            out.report.append(f"{logical_id}.Environment: cannot be evaluated; not carried over")
    concurrency = get("ReservedConcurrentExecutions")
    if concurrency is not None:
        concurrency = _integer(concurrency)
        if concurrency == 0:
            out.report.append(
                f"{logical_id}.ReservedConcurrentExecutions: 0 (the function is throttled in "
                "Lambda) is not carried over; disable its mappings instead"
            )
        else:
            entry["reserved_concurrent_executions"] = _placeholder(
                out, f"{path}.reserved_concurrent_executions", concurrency
            )


def _env_text(value: Any) -> Any:
    if isinstance(value, Unresolved | str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _relative(local: Path, paths: Paths) -> str:
    """A path as written in the config: relative to the config file's directory."""
    return Path(os.path.relpath(local, paths.output_dir.resolve())).as_posix()


def _code_path(
    source: _FunctionSource,
    runtime: str,
    handler: Any,
    resolver: Resolver,
    paths: Paths,
    out: Translation,
) -> tuple[str, Path | None]:
    """code_path relative to the written config file, and the local code directory (None if
    the code is not local): CodeUri (SAM) or a local Code path (`aws cloudformation package`
    style) is relative to the template; inline code is written out under `inline/`."""
    logical_id, resource_type, properties = (
        source.logical_id,
        source.resource_type,
        source.properties,
    )
    key = "CodeUri" if resource_type == SAM_FUNCTION else "Code"
    code = resolver.resolve(properties.get(key)) if key in properties else None
    if "InlineCode" in properties or (isinstance(code, dict) and "ZipFile" in code):
        inline = (
            resolver.resolve(properties["InlineCode"])
            if "InlineCode" in properties
            else code["ZipFile"]  # type: ignore[index]
        )
        written = _inline_code(logical_id, inline, runtime, handler, paths, out)
        if written is not None:
            return _relative(written, paths), written
        return ".", None
    if code is None and resource_type == SAM_FUNCTION:
        code = "."
    if not isinstance(code, str) or code.startswith("s3://"):
        if code is not None or resource_type == LAMBDA_FUNCTION:
            out.report.append(
                f'{logical_id}.{key}: code is not a local path; code_path set to "." '
                "(point it at the unpacked code)"
            )
        return ".", None
    local = (paths.template_dir / code).resolve()
    return _relative(local, paths), local


_INLINE_EXTENSIONS = {"python": ".py", "nodejs": ".js"}


def _inline_code(
    logical_id: str, code: Any, runtime: str, handler: Any, paths: Paths, out: Translation
) -> Path | None:
    """Lambda writes inline code (ZipFile / InlineCode) to one file named after the handler's
    module (`index.py` for `index.handler`); esm writes it to `inline/<function>/`."""
    extension = next((e for r, e in _INLINE_EXTENSIONS.items() if runtime.startswith(r)), None)
    if isinstance(code, Unresolved) or not isinstance(code, str):
        hint = code.hint if isinstance(code, Unresolved) else "it is not text"
        out.report.append(
            f"{logical_id}: inline code cannot be evaluated ({hint}); not written, "
            "write it to a file under code_path"
        )
        return None
    if extension is None or not isinstance(handler, str) or "." not in handler:
        out.report.append(
            f"{logical_id}: inline code for runtime {runtime or '(none)'} with handler "
            f"{handler!r} is not written (esm writes Python and Node.js inline code)"
        )
        return None
    module = handler.rsplit(".", 1)[0].replace(".", "/")
    directory = paths.output_dir.resolve() / "inline" / logical_id
    relative = f"inline/{logical_id}/{module}{extension}"
    out.files[relative] = code if code.endswith("\n") else code + "\n"
    out.report.append(f"{logical_id}: inline code written to {relative}")
    return directory


def _layers(
    source: _FunctionSource,
    resolver: Resolver,
    resources: Mapping[str, Any],
    paths: Paths,
    out: Translation,
) -> list[dict[str, str]]:
    """The function's layers defined in this template with a local ContentUri, in order:
    the directory whose content Lambda puts on sys.path (/opt/python), and the layer's
    requirements.txt when SAM builds it (`Metadata: BuildMethod: python3.x`)."""
    found: list[dict[str, str]] = []
    for item in source.properties.get("Layers") or []:
        where = f"{source.logical_id}.Layers"
        referenced = _referenced_resource(item)
        resource = resources.get(referenced) if referenced else None
        if not isinstance(resource, Mapping) or resource.get("Type") not in _LAYER_TYPES:
            value = resolver.resolve(item)
            shown = value.expression if isinstance(value, Unresolved) else value
            out.report.append(
                f"{where}: not carried over ({shown} is not a layer of this template with a "
                "local ContentUri; put its python/ content in the function's code)"
            )
            continue
        properties = resource.get("Properties") or {}
        key = "ContentUri" if resource["Type"] == _LAYER_TYPES[0] else "Content"
        content = resolver.resolve(properties.get(key))
        if not isinstance(content, str) or content.startswith("s3://"):
            out.report.append(
                f"{where}: not carried over ({referenced}.{key} is not a local path; "
                "put its python/ content in the function's code)"
            )
            continue
        local = (paths.template_dir / content).resolve()
        method = str(((resource.get("Metadata") or {}).get("BuildMethod")) or "")
        layer: dict[str, str] = {"name": str(referenced)}
        if method.startswith("python"):
            layer["path"] = _relative(local, paths)
            if (local / "requirements.txt").is_file():
                layer["requirements"] = _relative(local / "requirements.txt", paths)
        elif (local / "python").is_dir():
            layer["path"] = _relative(local / "python", paths)
        else:
            out.report.append(
                f"{where}: not carried over ({referenced} has no python/ directory and no "
                "Metadata.BuildMethod python, so Lambda puts nothing of it on the Python path)"
            )
            continue
        found.append(layer)
    return found


def _build_entry(
    logical_id: str, kind: str, local: Path | None, layers: list[dict[str, str]], paths: Paths
) -> dict[str, Any] | None:
    """What `esm build` installs for a function with a requirements.txt or local layers
    (`sam build`: code + `pip install -r requirements.txt -t` + layers, one directory)."""
    requirements = local / "requirements.txt" if local is not None else None
    has_requirements = requirements is not None and requirements.is_file()
    if local is None or not (has_requirements or layers):
        return None
    build: dict[str, Any] = {"kind": kind, "source": _relative(local, paths)}
    if has_requirements and requirements is not None:
        build["requirements"] = _relative(requirements, paths)
    if layers:
        build["layers"] = layers
    build["package"] = f"{BUILD_DIR}/{logical_id}"
    return build
