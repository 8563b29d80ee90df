"""source_access_configurations to Kafka client settings, and MSK's bootstrap brokers.

Owns reading the secrets (Secrets Manager, a local file or an environment variable) and
turning them into aiokafka's security options; must never log a secret's value (only its
location, `SecretRef.__str__`), and does nothing per record.

AWS rules (Lambda developer guide, kafka-cluster-auth and msk-cluster-auth):
- BASIC_AUTH (SASL/PLAIN), SASL_SCRAM_256_AUTH, SASL_SCRAM_512_AUTH: the secret is JSON
  `{"username": ..., "password": ...}`; Lambda connects with SASL over TLS (SASL_SSL).
- CLIENT_CERTIFICATE_TLS_AUTH: `{"certificate": PEM chain, "privateKey": PEM,
  "privateKeyPassword": optional}`, over TLS.
- SERVER_ROOT_CA_CERTIFICATE: `{"certificate": PEM}`, the CA that signs the brokers' certs.
- MSK brokers come from GetBootstrapBrokers: the SASL/SCRAM string with SCRAM, the TLS one
  with a client certificate, else the TLS (or plaintext) one.
esm-only: `kafka_security_protocol` overrides the protocol (e.g. SASL_PLAINTEXT for a local
broker without TLS), documented as a departure from AWS.

A refused login is AWS's "SASL authentication failed" (with-kafka-troubleshoot: the sign-in
credentials are not valid): `check_login` names it, where aiokafka says only "Unable to
bootstrap" (or raises KeyError from its SCRAM client on a server's RFC 5802 `e=` answer,
which `is_scram_refusal` recognises).

Rotation: the secrets are read when the mapping starts and again before each reconnect that
follows a refused login (`KafkaRuntime`), so a password rotated in Secrets Manager is picked
up without a restart, as a Lambda user expects of a secret that Secrets Manager exists to
rotate (MSK developer guide, msk-password: secrets reduce "the overhead of ... rotating
credentials"). AWS does not document when Lambda reads the secret again; esm reads it once
per reconnect attempt after a refusal, so the reconnect backoff bounds the reads.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from esm.errors import ConfigError, SourceUnavailable
from esm.sources.kafka.config import (
    AUTH_TYPES,
    SASL_TYPES,
    KafkaMappingConfig,
    SecretRef,
)

SASL_MECHANISMS = {
    "BASIC_AUTH": "PLAIN",
    "SASL_SCRAM_256_AUTH": "SCRAM-SHA-256",
    "SASL_SCRAM_512_AUTH": "SCRAM-SHA-512",
}

SecretFetcher = Callable[[str], Awaitable[str]]
"""ARN -> SecretString (Secrets Manager GetSecretValue)."""


async def read_secret(ref: SecretRef, fetch: SecretFetcher | None) -> dict[str, Any]:
    """The secret's JSON object; errors name the location, never the content."""
    if ref.kind == "env":
        text = os.environ.get(ref.location)
        if text is None:
            raise SourceUnavailable(f"secret {ref}: environment variable {ref.location} is not set")
    elif ref.kind == "file":
        try:
            text = Path(ref.location).read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror
            raise SourceUnavailable(f"secret {ref}: cannot read the file ({reason})") from None
    else:
        if fetch is None:
            raise SourceUnavailable(f"secret {ref}: no Secrets Manager client")
        text = await fetch(ref.location)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise SourceUnavailable(f"secret {ref}: not a JSON object") from None
    if not isinstance(value, dict):
        raise SourceUnavailable(f"secret {ref}: not a JSON object")
    return value


def secretsmanager_fetcher(client: Any) -> SecretFetcher:
    """GetSecretValue through an aiobotocore secretsmanager client."""

    async def fetch(arn: str) -> str:
        try:
            response = await client.get_secret_value(SecretId=arn)
        except Exception as exc:  # botocore raises per-service error classes
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            raise SourceUnavailable(
                f"secret secretsmanager:{arn}: GetSecretValue failed ({code or type(exc).__name__})"
            ) from None
        text = response.get("SecretString")
        if text is None and response.get("SecretBinary") is not None:
            text = bytes(response["SecretBinary"]).decode("utf-8")
        if text is None:
            raise SourceUnavailable(f"secret secretsmanager:{arn}: has no value")
        return str(text)

    return fetch


async def client_options(
    config: KafkaMappingConfig, fetch: SecretFetcher | None = None
) -> dict[str, Any]:
    """aiokafka keyword arguments for the mapping's security settings, and the client id
    that names this worker in the consumer group (Kafka's member id starts with it, which
    is what `esm status` shows as a partition's owner)."""
    auth = config.access_of(AUTH_TYPES)
    ca = config.access_of(["SERVER_ROOT_CA_CERTIFICATE"])
    options: dict[str, Any] = {"client_id": worker_client_id()}
    if auth is not None and auth.type in SASL_TYPES:
        secret = await read_secret(auth.uri, fetch)
        options["sasl_mechanism"] = SASL_MECHANISMS[auth.type]
        options["sasl_plain_username"] = _field(secret, "username", auth.uri)
        options["sasl_plain_password"] = _field(secret, "password", auth.uri)
        protocol = "SASL_SSL"
    elif auth is not None or ca is not None:
        protocol = "SSL"
    else:
        protocol = "PLAINTEXT"
    protocol = config.security_protocol or protocol
    options["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = await _ssl_context(config, fetch)
    return options


def worker_client_id() -> str:
    """`esm-HOST-PID`: which esm process a group member is (one per daemon process)."""
    return f"esm-{socket.gethostname()}-{os.getpid()}"


async def _ssl_context(config: KafkaMappingConfig, fetch: SecretFetcher | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca = config.access_of(["SERVER_ROOT_CA_CERTIFICATE"])
    if ca is not None:
        secret = await read_secret(ca.uri, fetch)
        context.load_verify_locations(cadata=_field(secret, "certificate", ca.uri))
    cert = config.access_of(["CLIENT_CERTIFICATE_TLS_AUTH"])
    if cert is not None:
        secret = await read_secret(cert.uri, fetch)
        _load_client_certificate(context, secret, cert.uri)
    return context


def _load_client_certificate(
    context: ssl.SSLContext, secret: Mapping[str, Any], ref: SecretRef
) -> None:
    """ssl reads a certificate chain from files only: write both to a private temporary
    directory for the call and remove them at once."""
    chain = _field(secret, "certificate", ref)
    key = _field(secret, "privateKey", ref)
    password = secret.get("privateKeyPassword")
    with tempfile.TemporaryDirectory(prefix="esm-kafka-") as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        for path, text in ((cert_path, chain), (key_path, key)):
            path.touch(mode=0o600)
            path.write_text(text, encoding="utf-8")
        try:
            context.load_cert_chain(cert_path, key_path, password=password)
        except (ssl.SSLError, ValueError) as exc:
            raise SourceUnavailable(
                f"secret {ref}: certificate or privateKey is not usable PEM ({type(exc).__name__})"
            ) from None


def _field(secret: Mapping[str, Any], name: str, ref: SecretRef) -> str:
    value = secret.get(name)
    if not isinstance(value, str) or not value:
        raise SourceUnavailable(f"secret {ref}: has no {name!r} string")
    return value


def msk_broker_string(config: KafkaMappingConfig, response: Mapping[str, Any]) -> tuple[str, ...]:
    """The brokers of a GetBootstrapBrokers response that fit the mapping's auth."""
    auth = config.access_of(AUTH_TYPES)
    if auth is not None and auth.type == "SASL_SCRAM_512_AUTH":
        names = ["BootstrapBrokerStringSaslScram", "BootstrapBrokerStringPublicSaslScram"]
    else:
        names = ["BootstrapBrokerStringTls", "BootstrapBrokerStringPublicTls"]
        if auth is None:
            names.append("BootstrapBrokerString")
    for name in names:
        text = response.get(name)
        if isinstance(text, str) and text:
            return tuple(text.split(","))
    raise SourceUnavailable(
        f"MSK cluster {config.cluster_arn}: GetBootstrapBrokers has none of {', '.join(names)}"
    )


async def bootstrap_servers(config: KafkaMappingConfig, kafka_client: Any) -> tuple[str, ...]:
    """The brokers to connect to: the configured ones, else MSK's GetBootstrapBrokers."""
    if config.bootstrap_servers:
        return config.bootstrap_servers
    if config.cluster_arn is None:
        raise ConfigError([f"mapping {config.name}: no bootstrap servers"])
    try:
        response = await kafka_client.get_bootstrap_brokers(ClusterArn=config.cluster_arn)
    except Exception as exc:  # botocore raises per-service error classes
        raise SourceUnavailable(
            f"MSK cluster {config.cluster_arn}: GetBootstrapBrokers failed ({type(exc).__name__}); "
            "set msk_bootstrap_servers to name the brokers"
        ) from None
    return msk_broker_string(config, response)


LOGIN_TIMEOUT_S = 10.0
"""How long one login attempt may take before the next broker is tried."""


_CONNECTION_KEYS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


class KafkaLoginFailed(KafkaError):  # type: ignore[misc]
    """The brokers refused the mapping's SASL login. A KafkaError, so the runtime retries it
    with its reconnect backoff as AWS keeps retrying a mapping whose login fails; the text
    names the mapping, mechanism and secret location, never the username or password."""

    def __str__(self) -> str:  # KafkaError prefixes its class name; the log has it already
        return str(self.args[0]) if self.args else ""


async def check_login(
    config: KafkaMappingConfig, servers: Sequence[str], options: Mapping[str, Any]
) -> None:
    """Log in once to the first broker that answers; raise KafkaLoginFailed if it refuses.

    No-op without SASL. Brokers that cannot be reached are left to the consumer, which
    reports them as unavailable; only a broker's refusal is decided here.
    """
    mechanism = options.get("sasl_mechanism")
    if mechanism is None:
        return
    security = {key: options[key] for key in _CONNECTION_KEYS if key in options}
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await create_conn(
                host, int(port), request_timeout_ms=int(LOGIN_TIMEOUT_S * 1000), **security
            )
        except KafkaConnectionError:  # connected, then closed before the login ended
            reason = f"the broker closed the connection during the {mechanism} login"
            raise KafkaLoginFailed(_refused(config, server, reason)) from None
        except (TimeoutError, OSError):  # not reached: the consumer reports that
            continue
        except UnsupportedSaslMechanismError as exc:
            reason = _scrub(str(exc).split(": ", 1)[-1], options)
            raise KafkaLoginFailed(_refused(config, server, reason)) from None
        except (SaslAuthenticationFailed, IllegalSaslStateError):
            raise KafkaLoginFailed(_refused(config, server, f"{mechanism} refused")) from None
        except (KeyError, ValueError):  # aiokafka's SCRAM client on the server's `e=` answer
            raise KafkaLoginFailed(_refused(config, server, f"{mechanism} refused")) from None
        conn.close()
        return


def is_scram_refusal(exc: BaseException) -> bool:
    """Is this aiokafka's SCRAM client failing on a server's refusal? On RFC 5802's `e=`
    answer (no `v=` signature) it raises KeyError (or ValueError) from inside aiokafka/conn.py,
    wherever the connection was opened: a KeyError raised anywhere else is a bug, not a
    refused login, and must not be retried as one."""
    if not isinstance(exc, KeyError | ValueError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    return path.name == "conn.py" and path.parent.name == "aiokafka"


def credentials_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Did a re-read change the SASL login (for a log field: never the values)?"""
    keys = ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
    return any(old.get(key) != new.get(key) for key in keys)


def login_refused(config: KafkaMappingConfig, server: str, reason: str) -> KafkaLoginFailed:
    """The mapping's error for a login `server` refused (`reason` names no credential)."""
    return KafkaLoginFailed(_refused(config, server, reason))


def _refused(config: KafkaMappingConfig, server: str, reason: str) -> str:
    auth = config.access_of(AUTH_TYPES)
    where = f"; secret {auth.uri}" if auth is not None else ""
    return f"mapping {config.name}: SASL authentication failed ({reason}; {server}{where})"


def _scrub(text: str, options: Mapping[str, Any]) -> str:
    """A broker's message, without the credentials should a broker echo them."""
    for name in ("sasl_plain_password", "sasl_plain_username"):
        value = options.get(name)
        if value:
            text = text.replace(str(value), "****")
    return text[:160]
