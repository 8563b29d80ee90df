"""Reading CloudFormation / SAM templates (JSON, or YAML with the short-form intrinsic tags).

Owns turning a template file into plain dicts where every intrinsic is in its long form
(`!GetAtt Queue.Arn` -> `{"Fn::GetAtt": ["Queue", "Arn"]}`), as CloudFormation itself does.
It does not resolve anything (see `intrinsics`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from esm.errors import EsmError


class TemplateError(EsmError):
    """The template cannot be read or is not a CloudFormation template."""


# Short-form tags and the long-form key CloudFormation expands them to.
_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    "GetAtt": "Fn::GetAtt",
    **{
        name: f"Fn::{name}"
        for name in (
            "Base64",
            "Cidr",
            "FindInMap",
            "GetAZs",
            "ImportValue",
            "Join",
            "Select",
            "Split",
            "Sub",
            "Transform",
            "And",
            "Equals",
            "If",
            "Not",
            "Or",
            "ToJsonString",
            "Length",
        )
    },
}


def load_template(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read the template ({exc.strerror})") from None
    document = _parse(text, path)
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path}: not a CloudFormation template (no Resources section)")
    return document


def _parse(text: str, path: Path) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{path}: not valid JSON ({exc})") from None
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise TemplateError(f"{path}: reading YAML templates needs PyYAML") from None
    try:
        return yaml.load(text, Loader=_loader_class())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML ({exc})") from None


_LOADER: Any = None


def _loader_class() -> Any:
    """A SafeLoader that knows CloudFormation's tags and reads scalars as CloudFormation does:
    dates stay text (`AWSTemplateFormatVersion: 2010-09-09`), and only true/false are booleans
    (YAML 1.1's yes/no/on/off are strings, so a condition named `Off` stays `Off`)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml  # type: ignore[import-untyped,unused-ignore]

    class CloudFormationLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
        pass

    dropped = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    CloudFormationLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in dropped]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    CloudFormationLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )

    def construct(key: str) -> Any:
        def build(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
            value: Any
            if isinstance(node, yaml.ScalarNode):
                value = loader.construct_scalar(node)
                if key == "Fn::GetAtt":
                    logical, _, attribute = str(value).partition(".")
                    value = [logical, attribute]
            elif isinstance(node, yaml.SequenceNode):
                value = loader.construct_sequence(node, deep=True)
            else:
                value = loader.construct_mapping(node, deep=True)
            return {key: value}

        return build

    for tag, key in _TAGS.items():
        CloudFormationLoader.add_constructor(f"!{tag}", construct(key))
    _LOADER = CloudFormationLoader
    return _LOADER
