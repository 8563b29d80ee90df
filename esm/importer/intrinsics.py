"""Resolving CloudFormation intrinsic functions to values, as far as the importer can know them.

Owns `Ref`, `Fn::GetAtt`, `Fn::Sub`, `Fn::Join`, `Fn::If` and the other intrinsics, evaluated
against `--param` values, parameter defaults, pseudo parameters and (with `--stack-name`) the
deployed stack's physical resources. What cannot be known becomes an `Unresolved` value that
says what would resolve it; it never guesses and never calls AWS itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unresolved:
    """A value the template computes from something not known at import time."""

    expression: str
    """The intrinsic as written in short form, e.g. `!GetAtt OrdersQueue.Arn`."""
    hint: str
    """What to pass to resolve it, e.g. `--param OrdersQueueArn=...`."""

    def placeholder(self) -> str:
        """The text written in place of the value: `esm validate` rejects it wherever an ARN,
        a name or a number is expected, and the message quotes it, naming the key."""
        return f"<unresolved: {self.expression} - {self.hint}>"


class _NoValue:
    """`Ref: AWS::NoValue`: the property is removed."""


NO_VALUE = _NoValue()
_PSEUDO_CONSTANTS = {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


@dataclass(frozen=True)
class StackResource:
    """A deployed resource: its physical id and the attributes the importer could compute."""

    logical_id: str
    resource_type: str
    physical_id: str
    attributes: Mapping[str, str]


class Resolver:
    """Evaluates intrinsics of one template."""

    def __init__(
        self,
        template: Mapping[str, Any],
        params: Mapping[str, str],
        stack: Mapping[str, StackResource] | None = None,
        pseudo: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.params = params
        self.stack = stack or {}
        self.pseudo = {**_PSEUDO_CONSTANTS, **(pseudo or {})}
        self.parameters: Mapping[str, Any] = template.get("Parameters") or {}
        self.resources: Mapping[str, Any] = template.get("Resources") or {}
        self.conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self.mappings: Mapping[str, Any] = template.get("Mappings") or {}
        self.used_params: set[str] = set()

    # -- values --------------------------------------------------------------------------

    def resolve(self, node: Any) -> Any:
        """The value of a template fragment; `Unresolved` where it cannot be known."""
        if isinstance(node, dict):
            if len(node) == 1:
                ((key, arg),) = node.items()
                if key == "Ref":
                    return self.ref(str(arg))
                if key.startswith("Fn::"):
                    try:
                        return self._function(key, arg)
                    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                        short = key.removeprefix("Fn::")
                        return Unresolved(f"!{short} {arg!r}", "the intrinsic is malformed")
            result = {}
            for key, value in node.items():
                resolved = self.resolve(value)
                if resolved is not NO_VALUE:
                    result[key] = resolved
            return result
        if isinstance(node, list):
            return [v for v in (self.resolve(item) for item in node) if v is not NO_VALUE]
        return node

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            self.used_params.add(name)
            return self.params[name]
        if name.startswith("AWS::"):
            if name in self.pseudo:
                return self.pseudo[name]
            return Unresolved(f"!Ref {name}", f"pass --param {name}=... or --stack-name")
        if name in self.parameters:
            declared = self.parameters[name] or {}
            if "Default" in declared:
                default = declared["Default"]
                if str(declared.get("Type", "")).startswith(("List<", "CommaDelimitedList")):
                    return [part.strip() for part in str(default).split(",")]
                return default if isinstance(default, str) else _scalar_text(default)
            return Unresolved(f"!Ref {name}", f"pass --param {name}=...")
        if name in self.stack:
            return self.stack[name].physical_id
        return Unresolved(f"!Ref {name}", f"pass --param {name}=... or --stack-name")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        for key in (f"{logical_id}{attribute}", f"{logical_id}.{attribute}"):
            if key in self.params:
                self.used_params.add(key)
                return self.params[key]
        deployed = self.stack.get(logical_id)
        if deployed is not None and attribute in deployed.attributes:
            return deployed.attributes[attribute]
        return Unresolved(
            f"!GetAtt {logical_id}.{attribute}",
            f"pass --param {logical_id}{attribute}=... or --stack-name",
        )

    def _function(self, key: str, arg: Any) -> Any:
        if key == "Fn::GetAtt":
            if isinstance(arg, str):
                arg = arg.split(".", 1)
            parts = [self.resolve(a) for a in arg] if isinstance(arg, list) else []
            if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
                return Unresolved(f"!GetAtt {arg}", "write it as LogicalId.Attribute")
            return self.get_att(parts[0], parts[1])
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            delimiter, items = arg
            values = self.resolve(items)
            if isinstance(values, Unresolved):
                return values
            return _join(str(delimiter), values, f"!Join [{delimiter!r}, ...]")
        if key == "Fn::Select":
            index, items = (self.resolve(a) for a in arg)
            if isinstance(index, Unresolved):
                return index
            if isinstance(items, Unresolved):
                return items
            return items[int(index)]
        if key == "Fn::Split":
            delimiter, text = arg
            value = self.resolve(text)
            return value if isinstance(value, Unresolved) else str(value).split(str(delimiter))
        if key == "Fn::If":
            condition, when_true, when_false = arg
            outcome = self.condition(str(condition))
            if isinstance(outcome, Unresolved):
                return outcome
            return self.resolve(when_true if outcome else when_false)
        if key == "Fn::FindInMap":
            names = [self.resolve(a) for a in arg[:3]]
            for name in names:
                if isinstance(name, Unresolved):
                    return name
            try:
                return self.resolve(self.mappings[names[0]][names[1]][names[2]])
            except (KeyError, TypeError):
                if len(arg) > 3 and isinstance(arg[3], dict) and "DefaultValue" in arg[3]:
                    return self.resolve(arg[3]["DefaultValue"])
                return Unresolved(f"!FindInMap {names}", "no such entry in Mappings")
        if key == "Fn::ImportValue":
            export = self.resolve(arg)
            if isinstance(export, str) and export in self.params:
                self.used_params.add(export)
                return self.params[export]
            return Unresolved(
                f"!ImportValue {export if isinstance(export, str) else '...'}",
                f"pass --param {export if isinstance(export, str) else 'EXPORT'}=...",
            )
        if key in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
            return self._evaluate({key: arg})
        short = key.removeprefix("Fn::")
        return Unresolved(f"!{short}", f"esm import does not evaluate Fn::{short}")

    def _sub(self, arg: Any) -> Any:
        if isinstance(arg, list):
            text, variables = str(arg[0]), {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = str(arg), {}
        pieces: list[Any] = []
        position = 0
        for match in re.finditer(r"\$\{([^}]*)\}", text):
            pieces.append(text[position : match.start()])
            position = match.end()
            name = match.group(1).strip()
            if name.startswith("!"):
                pieces.append("${" + name[1:] + "}")
            elif name in variables:
                pieces.append(variables[name])
            elif "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                pieces.append(self.get_att(logical_id, attribute))
            else:
                pieces.append(self.ref(name))
        pieces.append(text[position:])
        unresolved = [p for p in pieces if isinstance(p, Unresolved)]
        if unresolved:
            return Unresolved(f"!Sub {text}", "; ".join(sorted({u.hint for u in unresolved})))
        return "".join(_scalar_text(p) for p in pieces)

    # -- conditions ----------------------------------------------------------------------

    def condition(self, name: str) -> bool | Unresolved:
        if name not in self.conditions:
            return Unresolved(f"Condition {name}", "the template does not define it")
        return self._evaluate(self.conditions[name])

    def _evaluate(self, node: Any) -> bool | Unresolved:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Condition":
                return self.condition(str(arg))
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                for side in (left, right):
                    if isinstance(side, Unresolved):
                        return side
                return _scalar_text(left) == _scalar_text(right)
            if key in ("Fn::Not", "Fn::And", "Fn::Or"):
                values = [self._evaluate(a) for a in arg]
                for value in values:
                    if isinstance(value, Unresolved):
                        return value
                if key == "Fn::Not":
                    return not values[0]
                return all(values) if key == "Fn::And" else any(values)
        return Unresolved("a condition", f"cannot evaluate {node!r}")


def _join(delimiter: str, values: Any, expression: str) -> Any:
    if not isinstance(values, list):
        return Unresolved(expression, "its list is not a list")
    unresolved = [v for v in values if isinstance(v, Unresolved)]
    if unresolved:
        return Unresolved(
            f"{expression} of {', '.join(u.expression for u in unresolved)}",
            "; ".join(sorted({u.hint for u in unresolved})),
        )
    return delimiter.join(_scalar_text(v) for v in values)


def _scalar_text(value: Any) -> str:
    """How CloudFormation writes a scalar into a string (`true`, not `True`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def contains_unresolved(value: Any) -> bool:
    if isinstance(value, Unresolved):
        return True
    if isinstance(value, dict):
        return any(contains_unresolved(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unresolved(v) for v in value)
    return False
