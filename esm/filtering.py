"""Lambda event filtering (`FilterCriteria`): compile patterns once, then match records fast.

Owns the pattern language (EventBridge event-pattern syntax, as Lambda supports it), its
validation messages, and the *views*: what a pattern sees for each source's record. Must not
do I/O, touch the record that is delivered to the function, or know about batching; the
pollers call `FilterSet.matches(view(record))` per record and decide what a miss means
(SQS deletes the message, streams checkpoint past it).

Example::

    filters = FilterSet.compile(['{"body": {"RequestCode": ["BBBB"]}}'])
    filters.matches(sqs_filter_view(record))  # True when the body's RequestCode is "BBBB"

AWS rules followed (Lambda developer guide "Control which events Lambda sends to your
function", the EventBridge "event patterns" pages, and LocalStack's AWS-validated tests):

- Up to five filters; a record passes when any filter matches. A pattern is at most 4096
  characters (`Filter.Pattern`). With no filters at all every record passes.
- A pattern is a JSON object. Every field named must be present and match (AND); fields
  not named are ignored. A leaf is a non-empty list of alternatives (OR).
- Leaf alternatives: exact string/number/true/false, `null`, `""`; `prefix`, `suffix`
  (either may take `{"equals-ignore-case": ...}`), `equals-ignore-case`, `anything-but`
  (a value or a list of only strings or only numbers), `numeric` (`=`, or one or two
  bounds such as `[">", 0, "<=", 5]`), `exists`, `wildcard`. `{"$or": [{..}, {..}]}` may
  appear in any object and ORs whole sub-patterns.
- Strings match character by character. Exact numbers match by their JSON form, so `300`
  does not equal `300.0` (esm compares integer-or-float and value, so `300.0` and `3.0e2`
  still equal each other, which AWS's text comparison would not). `numeric` compares
  values and applies only to JSON numbers: DynamoDB's `{"N": "5"}` is a string, so
  `numeric` never matches it (AWS behaviour, validated by LocalStack against AWS); match
  such values as strings.
- Where a document holds an array, the field matches if any element matches.
- `exists` looks at leaves: `exists: false` matches an absent field, and also a field
  holding an object or an empty array (the EventBridge docs' example; AWS-validated for
  DynamoDB `NewImage` attributes); `exists: true` matches a field holding a scalar
  (including `null`) or an array with one. At the record level a present object counts as
  present, so `{"body": [{"exists": false}]}` drops a JSON body, as AWS's SQS table says.
- `anything-but` needs the field present: an absent field never matches it.
- Not supported by Lambda (EventBridge Pipes, which shares Lambda's filter engine, lists
  them as unsupported): `anything-but` with `prefix`, `suffix`, `equals-ignore-case` or
  `wildcard`. Compiling such a pattern fails, as creating the mapping would on AWS.
- `cidr` (EventBridge's IP address matching, used in published EventBridge samples) is not in
  Lambda's filter rule syntax; compiling it fails with a line that says so (not a guess at a
  meaning Lambda does not promise).
  `wildcard` itself is accepted although AWS does not confirm it for Lambda.

Views (what a pattern is matched against):

- SQS: the Lambda record with `body` replaced by the parsed body when the body is a JSON
  object or array. AWS compares the body's format with the pattern's: a JSON body matches
  only object patterns on `body`, a plain-string body matches only leaf rules on `body`
  (`{"body": ["plain text"]}`, `{"body": [{"prefix": "ERROR"}]}`); a mismatch drops the
  message. esm gets that by leaving a non-JSON body a string: object patterns never match
  a string and leaf rules never match an object. A body that is a JSON scalar (`42`,
  `"hi"`, `true`) stays a plain string, so `{"body": ["42"]}` matches it (esm's choice;
  AWS does not document it).
- Kinesis: the fields of the record's `kinesis` object (`partitionKey`, `sequenceNumber`,
  `approximateArrivalTimestamp`, `data`...) at the top level, as AWS's examples filter
  (`{"partitionKey": ["1"], "data": {"City": ["Seattle"]}}`), with `data` base64-decoded
  and parsed. When `data` is not UTF-8 JSON (or is a JSON scalar) it becomes opaque: any
  pattern on `data` drops the record and patterns on other fields still apply (AWS: "Lambda
  filters on the other metadata properties only").
- DynamoDB: the stream record itself (`eventName`, `dynamodb.Keys`, `dynamodb.NewImage`
  in DynamoDB JSON, e.g. `{"dynamodb": {"NewImage": {"id": {"S": ["a"]}}}}`).

Decided by esm (AWS does not say): array matching is per element, so conditions under one
array element must hold in that same element; `$or` needs at least two alternatives; an
empty object is an error; equals-ignore-case folds with `str.lower`.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import orjson

from esm.errors import EsmError

MAX_FILTERS: Final = 5
MAX_PATTERN_CHARS: Final = 4096
MAX_PATTERN_DEPTH: Final = 64
"""Deepest nesting of objects and arrays in a pattern: ample for any event, and far from the
interpreter's recursion limit that compiling and matching would otherwise reach."""

Matcher = Callable[[Any], bool]
"""Matches the value found at a field (or `_MISSING`); object patterns match a whole record."""

Test = Callable[[Any], bool]
"""Tests one scalar leaf value (str, int, float, bool or None)."""

_NUMERIC_OPS: Final = ("=", "<", "<=", ">", ">=")
_LOWER_OPS: Final = (">", ">=")
_UPPER_OPS: Final = ("<", "<=")
_OPERATORS: Final = (
    "prefix",
    "suffix",
    "equals-ignore-case",
    "anything-but",
    "numeric",
    "exists",
    "wildcard",
)
_NOT_FOR_LAMBDA: Final = {
    "cidr": (
        '"cidr" (IP address matching) is an EventBridge operator that Lambda does not document'
        " for event filtering, so esm refuses it rather than guess what Lambda would do; match"
        ' the address with "prefix" (e.g. {"prefix": "10.0.0."}) or check it in the handler'
    ),
}
"""EventBridge operators absent from Lambda's filter rule syntax (Lambda developer guide,
"Control which events Lambda sends to your function"), each with the line that says so."""


class _Missing:
    """The value of a field the record does not have."""

    def __repr__(self) -> str:
        return "<missing>"


class _Opaque:
    """A data field that is present but not JSON (Kinesis `data`): no pattern matches it."""

    def __repr__(self) -> str:
        return "<opaque>"


_MISSING: Final = _Missing()
_OPAQUE: Final = _Opaque()


class FilterPatternError(EsmError):
    """A filter pattern is invalid; `index` says which filter, `problem` what is wrong.

    `problem` names the field path inside the pattern, so config validation can prefix it
    with its own key path: `mappings[0].filter_criteria.filters[2].pattern: <problem>`.
    """

    def __init__(self, index: int | None, problem: str) -> None:
        self.index = index
        self.problem = problem
        where = "filters" if index is None else f"filters[{index}].pattern"
        super().__init__(f"{where}: {problem}")


class _Invalid(Exception):
    """Internal: a problem found while compiling, with the field path it was found at."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


class FilterSet:
    """The compiled filters of one mapping; a record passes if any filter matches."""

    __slots__ = ("_matchers", "_single_fields", "fields", "patterns")

    def __init__(
        self,
        matchers: Sequence[Matcher],
        patterns: Sequence[str],
        fields: frozenset[str] | None = None,
        single_fields: Sequence[tuple[str, Matcher]] | None = None,
    ) -> None:
        self._matchers = tuple(matchers)
        self.patterns = tuple(patterns)
        self.fields = fields
        """The record-level fields the patterns read (None: unknown, views stay whole)."""
        self._single_fields = tuple(single_fields) if single_fields is not None else None
        """Per pattern, its one field and that field's matcher, when every pattern names
        one record-level field and no `$or` (the usual `{"body": {...}}`); else None."""

    @classmethod
    def compile(cls, patterns: Sequence[str]) -> FilterSet:
        """Validate and compile every pattern; raise `FilterPatternError` on the first bad one.

        Compilation happens once per mapping so the per-record path runs only small
        closures and never parses a pattern again.
        """
        if len(patterns) > MAX_FILTERS:
            raise FilterPatternError(
                None, f"has {len(patterns)} filters; at most {MAX_FILTERS} are allowed"
            )
        compiled = []
        for index, text in enumerate(patterns):
            try:
                compiled.append(_compile_pattern(text))
            except _Invalid as exc:
                raise FilterPatternError(index, str(exc)) from None
        singles = [c.single for c in compiled]
        return cls(
            [c.matcher for c in compiled],
            patterns,
            frozenset().union(*(c.fields for c in compiled)),
            None if None in singles else [single for single in singles if single is not None],
        )

    def matches(self, view: Mapping[str, Any]) -> bool:
        """True if any pattern matches the view (every record passes when there are none,
        as on AWS where an empty FilterCriteria means no filtering)."""
        if not self._matchers:
            return True
        return _first_true(self._matchers, view)

    def predicate(self, view: View) -> Callable[[dict[str, Any]], bool]:
        """`record -> matches(view(record))`, made once per poller for the per-record path.

        A pattern reads only the record-level fields it names, so the view is narrowed to
        those (`narrow_view`): the same verdicts without copying or decoding the rest.
        When every pattern names the same single field, only that field's value is
        computed (`field_reader`) and handed to the patterns' matchers for it."""
        matchers = self._matchers
        if not matchers:
            return _always
        singles = self._single_fields
        if singles and len({name for name, _ in singles}) == 1:
            read = field_reader(view, singles[0][0])
            children = tuple(child for _, child in singles)
            if len(children) == 1:
                (child,) = children
                return lambda record: child(read(record))
            return lambda record: _first_true(children, read(record))
        narrowed = view if self.fields is None else narrow_view(view, self.fields)
        if len(matchers) == 1:
            (matcher,) = matchers
            return lambda record: matcher(narrowed(record))
        return lambda record: _first_true(matchers, narrowed(record))

    def __repr__(self) -> str:
        return f"FilterSet({list(self.patterns)!r})"


def validate_pattern(text: str) -> str | None:
    """The problem with one pattern (naming its field path), or None when it is valid."""
    try:
        _compile_pattern(text)
    except _Invalid as exc:
        return str(exc)
    return None


# --- views ------------------------------------------------------------------------------


def sqs_filter_view(record: dict[str, Any]) -> dict[str, Any]:
    """What a pattern sees for one Lambda SQS record: `body` parsed when it is JSON.

    Returns the record itself when the body stays a string (nothing is copied), otherwise a
    shallow copy with the parsed body; the record delivered to the function is untouched.
    """
    body = record.get("body")
    if type(body) is str:
        parsed = _parse_json_container(body)
        if parsed is not None:
            return {**record, "body": parsed}
    return record


def kinesis_filter_view(event: dict[str, Any]) -> dict[str, Any]:
    """What a pattern sees for one Lambda Kinesis record: the `kinesis` object's fields at
    the top level, `data` decoded and parsed (or opaque when it is not JSON)."""
    kinesis = event.get("kinesis")
    if type(kinesis) is not dict:  # esm's own records: skip the slow ABC check
        if not isinstance(kinesis, Mapping):
            return {}
        kinesis = dict(kinesis)
    view = kinesis.copy()
    if "data" in view:
        view["data"] = _decode_kinesis_data(view["data"])
    return view


def dynamodb_filter_view(event: dict[str, Any]) -> dict[str, Any]:
    """What a pattern sees for one DynamoDB stream record: the record itself, in DynamoDB
    JSON (`{"dynamodb": {"NewImage": {"n": {"N": ["5"]}}}}` matches the number 5)."""
    return event


View = Callable[[dict[str, Any]], Mapping[str, Any]]
"""What patterns see of a record (one of the views above)."""


def narrow_view(view: View, fields: frozenset[str]) -> View:
    """`view` restricted to the record-level fields that patterns name.

    A compiled pattern looks a record up only by the fields it names, so the narrowed
    view gives every pattern the same verdict; it skips copying the other fields and,
    unless a pattern names `data` (Kinesis) or `body` (SQS), decoding and parsing it."""
    if view is kinesis_filter_view:
        return _narrow_kinesis_view(fields)
    if view is sqs_filter_view:
        return _narrow_sqs_view(fields)
    return view


def field_reader(view: View, name: str) -> Callable[[dict[str, Any]], Any]:
    """`record -> view(record).get(name, <missing>)`: one field of the view, computed
    without building the view (Kinesis `data` and SQS `body` decoded and parsed)."""
    if view is kinesis_filter_view and name == "data":
        return _kinesis_data
    if view is sqs_filter_view and name == "body":
        return _sqs_body
    narrowed = narrow_view(view, frozenset({name}))
    return lambda record: narrowed(record).get(name, _MISSING)


def _kinesis_data(event: dict[str, Any]) -> Any:
    """`data` as the Kinesis view holds it."""
    kinesis = event.get("kinesis")
    if type(kinesis) is not dict:
        return kinesis_filter_view(event).get("data", _MISSING)
    if "data" not in kinesis:
        return _MISSING
    return _decode_kinesis_data(kinesis["data"])


def _sqs_body(record: dict[str, Any]) -> Any:
    """`body` as the SQS view holds it."""
    if "body" not in record:
        return _MISSING
    body = record["body"]
    if type(body) is str:
        parsed = _parse_json_container(body)
        if parsed is not None:
            return parsed
    return body


def _narrow_kinesis_view(fields: frozenset[str]) -> View:
    if fields == {"data"}:

        def data_only(event: dict[str, Any]) -> Mapping[str, Any]:
            kinesis = event.get("kinesis")
            if type(kinesis) is dict and "data" in kinesis:
                return {"data": _decode_kinesis_data(kinesis["data"])}
            return kinesis_filter_view(event)

        return data_only
    names = tuple(fields)

    def named(event: dict[str, Any]) -> Mapping[str, Any]:
        kinesis = event.get("kinesis")
        if type(kinesis) is not dict:
            return kinesis_filter_view(event)
        view = {name: kinesis[name] for name in names if name in kinesis}
        if "data" in view:
            view["data"] = _decode_kinesis_data(view["data"])
        return view

    return named


def _narrow_sqs_view(fields: frozenset[str]) -> View:
    if fields == {"body"}:

        def body_only(record: dict[str, Any]) -> Mapping[str, Any]:
            if "body" not in record:
                return {}
            body = record["body"]
            if type(body) is str:
                parsed = _parse_json_container(body)
                if parsed is not None:
                    return {"body": parsed}
            return {"body": body}

        return body_only
    names = tuple(fields)

    def named(record: dict[str, Any]) -> Mapping[str, Any]:
        view = {name: record[name] for name in names if name in record}
        body = view.get("body")
        if type(body) is str:
            parsed = _parse_json_container(body)
            if parsed is not None:
                view["body"] = parsed
        return view

    return named


def _parse_json_container(text: str | bytes) -> Any:
    """The parsed JSON object or array, or None; plain text is rejected before orjson so
    the common plain-text body costs no exception."""
    head = text[:1]
    if head not in _OPENERS:
        head = text.lstrip()[:1]
        if head not in _OPENERS:
            return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    kind = type(value)
    return value if kind is dict or kind is list else None


_OPENERS: Final = frozenset({"{", "[", b"{", b"["})
"""The first character of a JSON object or array, as text and as bytes."""


def _decode_kinesis_data(data: Any) -> Any:
    """The parsed JSON object or array in base64 `data`, else opaque (this runs per
    record: `_parse_json_container`'s test is repeated here to save a call)."""
    if type(data) is not str and not isinstance(data, str):
        return _OPAQUE
    try:
        # a2b_base64 in strict mode is b64decode(validate=True) without its per-call regex.
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return _OPAQUE
    head = raw[:1]
    if head != b"{" and head != b"[" and raw.lstrip()[:1] not in _OPENERS:
        return _OPAQUE
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _OPAQUE
    kind = type(value)
    return value if kind is dict or kind is list else _OPAQUE


# --- compiling --------------------------------------------------------------------------


class _Compiled(NamedTuple):
    matcher: Matcher
    fields: frozenset[str]
    """The record-level fields the pattern reads."""
    single: tuple[str, Matcher] | None
    """The pattern's one field and its matcher, when it names one field and no `$or`."""


def _compile_pattern(text: str) -> _Compiled:
    if not isinstance(text, str):
        raise _Invalid("", f"must be a JSON string, got {type(text).__name__}")
    if len(text) > MAX_PATTERN_CHARS:
        raise _Invalid("", f"is {len(text)} characters; at most {MAX_PATTERN_CHARS}")
    try:
        pattern = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Invalid("", f"is not valid JSON ({exc})") from None
    if not isinstance(pattern, dict):
        raise _Invalid("", f"must be a JSON object, got {_describe(pattern)}")
    if _depth(pattern) > MAX_PATTERN_DEPTH:
        # Compiling and matching recurse once per level: deeper would raise RecursionError.
        raise _Invalid("", f"is nested more than {MAX_PATTERN_DEPTH} levels deep")
    if not pattern:
        raise _Invalid("", "is empty; name at least one field to match")
    if len(pattern) == 1 and "$or" not in pattern:
        ((name, value),) = pattern.items()
        child = _compile_field(value, name, top=True)
        return _Compiled(_object_matcher(((name, child),), ()), frozenset({name}), (name, child))
    return _Compiled(_compile_object(pattern, "", top=True), _named_fields(pattern), None)


def _depth(value: Any) -> int:
    """Levels of objects and arrays in parsed JSON, counted without recursing."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _named_fields(pattern: dict[str, Any]) -> frozenset[str]:
    """The fields an object pattern looks up in the object it matches: its own keys and
    those of its `$or` branches, which match the same object (called on a valid pattern)."""
    names = {key for key in pattern if key != "$or"}
    for branch in pattern.get("$or", ()):
        names |= _named_fields(branch)
    return frozenset(names)


def _compile_object(pattern: dict[str, Any], path: str, *, top: bool = False) -> Matcher:
    """An object pattern: every named field must match, and one branch of its `$or`.

    `top` marks the record level, where a data field (SQS `body`) may hold a parsed JSON
    document; see `_leaf_matcher`."""
    fields: list[tuple[str, Matcher]] = []
    branches: tuple[Matcher, ...] = ()
    for key, value in pattern.items():
        sub = f"{path}.{key}" if path else key
        if key == "$or":
            branches = _compile_or(value, sub, top=top)
        else:
            fields.append((key, _compile_field(value, sub, top=top)))
    return _object_matcher(tuple(fields), branches)


def _compile_or(value: Any, path: str, *, top: bool) -> tuple[Matcher, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise _Invalid(path, "must be a list of at least two object patterns")
    branches = []
    for i, branch in enumerate(value):
        sub = f"{path}[{i}]"
        if not isinstance(branch, dict) or not branch:
            raise _Invalid(sub, f"must be a non-empty object pattern, got {_describe(branch)}")
        branches.append(_compile_object(branch, sub, top=top))
    return tuple(branches)


def _compile_field(value: Any, path: str, *, top: bool) -> Matcher:
    if isinstance(value, dict):
        if not value:
            raise _Invalid(path, "is an empty object; name a field or give a list of values")
        return _compile_object(value, path)
    if isinstance(value, list):
        return _compile_leaf(value, path, top=top)
    raise _Invalid(path, f"must be a list of values or an object, got {_describe(value)}")


def _compile_leaf(rules: list[Any], path: str, *, top: bool) -> Matcher:
    """A list of alternatives for one field: any exact value or operator may match."""
    if not rules:
        raise _Invalid(path, "the list of values is empty; give at least one value")
    strings: set[str] = set()
    others: set[tuple[type, Any]] = set()
    null_ok = False
    absent_ok = False
    tests: list[Test] = []
    for rule in rules:
        if isinstance(rule, str):
            strings.add(rule)
        elif rule is None:
            null_ok = True
        elif isinstance(rule, bool | int | float):
            others.add((type(rule), rule))
        elif isinstance(rule, dict):
            test, absent = _compile_operator(rule, path)
            absent_ok = absent_ok or absent
            if test is not None:
                tests.append(test)
        else:
            raise _Invalid(
                path,
                f"{_describe(rule)} is not a value; use a string, number, true/false, null "
                "or an operator object",
            )
    exact = frozenset(strings)
    scalar = _scalar_test(exact, frozenset(others), null_ok, tuple(tests))
    strings_only = not others and not null_ok and not tests
    return _leaf_matcher(exact, strings_only, scalar, absent_ok, top=top)


def _compile_operator(rule: dict[str, Any], path: str) -> tuple[Test | None, bool]:
    """One operator object; returns its scalar test and whether it accepts an absent field."""
    if len(rule) != 1:
        keys = ", ".join(f'"{k}"' for k in rule) or "none"
        raise _Invalid(path, f"an operator object has exactly one key, got {keys}")
    ((op, operand),) = rule.items()
    if op == "exists":
        if not isinstance(operand, bool):
            raise _Invalid(path, f'"exists" must be true or false, got {_describe(operand)}')
        return (_always if operand else None), not operand
    if op == "numeric":
        return _compile_numeric(operand, path), False
    if op == "anything-but":
        return _compile_anything_but(operand, path), False
    if op in ("prefix", "suffix"):
        return _compile_affix(op, operand, path), False
    if op == "equals-ignore-case":
        folded = _string_operand(op, operand, path).lower()
        return (lambda v: type(v) is str and v.lower() == folded), False
    if op == "wildcard":
        return _compile_wildcard(_string_operand(op, operand, path), path), False
    if op in _NOT_FOR_LAMBDA:
        raise _Invalid(path, _NOT_FOR_LAMBDA[op])
    supported = ", ".join(_OPERATORS)
    raise _Invalid(path, f'unknown operator "{op}"; Lambda supports {supported}')


def _string_operand(op: str, operand: Any, path: str) -> str:
    if not isinstance(operand, str):
        raise _Invalid(path, f'"{op}" needs a string, got {_describe(operand)}')
    return operand


def _compile_affix(op: str, operand: Any, path: str) -> Test:
    """`prefix`/`suffix`, optionally `{"equals-ignore-case": ...}` inside."""
    ignore_case = False
    if isinstance(operand, dict):
        if list(operand) != ["equals-ignore-case"]:
            raise _Invalid(path, f'"{op}" takes a string or {{"equals-ignore-case": string}}')
        operand = operand["equals-ignore-case"]
        ignore_case = True
    text = _string_operand(op, operand, path)
    if ignore_case:
        folded = text.lower()
        if op == "prefix":
            return lambda v: type(v) is str and v.lower().startswith(folded)
        return lambda v: type(v) is str and v.lower().endswith(folded)
    if op == "prefix":
        return lambda v: type(v) is str and v.startswith(text)
    return lambda v: type(v) is str and v.endswith(text)


def _compile_anything_but(operand: Any, path: str) -> Test:
    """`anything-but`: a present value other than the listed strings or numbers."""
    if isinstance(operand, dict):
        inner = ", ".join(f'"{k}"' for k in operand) or "{}"
        raise _Invalid(
            path,
            f'"anything-but" with {inner} is not supported by Lambda event filtering; '
            "give a value or a list of values",
        )
    values = operand if isinstance(operand, list) else [operand]
    if not values:
        raise _Invalid(path, '"anything-but" list is empty')
    kinds = {_anything_but_kind(v, path) for v in values}
    if len(kinds) > 1:
        raise _Invalid(path, '"anything-but" list must hold only strings or only numbers')
    excluded = frozenset((type(v), v) for v in values)
    return lambda v: (type(v), v) not in excluded


def _anything_but_kind(value: Any, path: str) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    raise _Invalid(path, f'"anything-but" takes strings or numbers, got {_describe(value)}')


def _compile_numeric(operand: Any, path: str) -> Test:
    """`numeric`: `["=", n]`, one bound, or a lower and an upper bound (either order)."""
    shape = 'a list of operator/number pairs, like [">", 0, "<=", 5]'
    if not isinstance(operand, list) or len(operand) not in (2, 4):
        raise _Invalid(path, f'"numeric" needs {shape}')
    bounds: dict[str, tuple[str, float]] = {}
    for op, number in zip(operand[::2], operand[1::2], strict=True):
        if op not in _NUMERIC_OPS:
            raise _Invalid(
                path, f'"numeric" operator {_describe(op)} is not one of {", ".join(_NUMERIC_OPS)}'
            )
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise _Invalid(path, f'"numeric" needs a number after "{op}", got {_describe(number)}')
        side = "eq" if op == "=" else "lower" if op in _LOWER_OPS else "upper"
        if side in bounds or (bounds and "eq" in (side, *bounds)):
            raise _Invalid(
                path,
                f'"numeric" takes "=" alone, or at most one lower and one upper bound: {shape}',
            )
        bounds[side] = (op, number)
    if "eq" in bounds:
        target = bounds["eq"][1]
        return lambda v: type(v) in (int, float) and v == target
    lower, upper = bounds.get("lower"), bounds.get("upper")
    if lower and upper and lower[1] >= upper[1]:
        raise _Invalid(path, f'"numeric" range is empty: {lower[1]} is not below {upper[1]}')
    return _range_test(lower, upper)


def _range_test(lower: tuple[str, float] | None, upper: tuple[str, float] | None) -> Test:
    lo_op, lo = lower if lower else (">=", float("-inf"))
    hi_op, hi = upper if upper else ("<=", float("inf"))
    if lo_op == ">" and hi_op == "<":
        return lambda v: type(v) in (int, float) and lo < v < hi
    if lo_op == ">":
        return lambda v: type(v) in (int, float) and lo < v <= hi
    if hi_op == "<":
        return lambda v: type(v) in (int, float) and lo <= v < hi
    return lambda v: type(v) in (int, float) and lo <= v <= hi


def _compile_wildcard(text: str, path: str) -> Test:
    """`wildcard`: `*` matches any run of characters, `\\*` a literal star."""
    parts: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "*\\":
                raise _Invalid(
                    path, f'"wildcard" {_describe(text)}: "\\" may only escape "*" or "\\"'
                )
            parts.append(re.escape(text[i + 1]))
            i += 2
            continue
        if char == "*":
            if parts and parts[-1] == ".*":
                raise _Invalid(path, f'"wildcard" {_describe(text)} has consecutive "*"')
            parts.append(".*")
        else:
            parts.append(re.escape(char))
        i += 1
    regex = re.compile("".join(parts), re.DOTALL)
    return lambda v: type(v) is str and regex.fullmatch(v) is not None


# --- matching ---------------------------------------------------------------------------


def _always(value: Any) -> bool:
    return True


def _scalar_test(
    strings: frozenset[str],
    others: frozenset[tuple[type, Any]],
    null_ok: bool,
    tests: tuple[Test, ...],
) -> Test:
    """One scalar against a leaf's exact values and operators."""

    def test(v: Any) -> bool:
        if type(v) is str:
            if v in strings:
                return True
        elif v is None:
            if null_ok:
                return True
        elif (type(v), v) in others:
            return True
        return _first_true(tests, v)

    return test


def _first_true(matchers: tuple[Callable[[Any], bool], ...], value: Any) -> bool:
    """any() without the generator: this runs per record per pattern, and a plain loop is
    measurably cheaper for the handful of matchers a pattern has."""
    for matcher in matchers:  # noqa: SIM110
        if matcher(value):
            return True
    return False


def _leaf_values(items: list[Any], out: list[Any]) -> list[Any]:
    """The scalars in a (possibly nested) array; objects in it are not leaves."""
    for item in items:
        if isinstance(item, list):
            _leaf_values(item, out)
        elif not isinstance(item, Mapping) and item is not _OPAQUE:
            out.append(item)
    return out


def _leaf_matcher(
    strings: frozenset[str], strings_only: bool, test: Test, absent_ok: bool, *, top: bool
) -> Matcher:
    """A leaf rule against whatever the record holds at that field; a string value (the
    common case) against an all-strings leaf is one set lookup.

    Inside a document a present object, or an array with no scalars, is no leaf, so only
    `exists: false` matches it (EventBridge). At the record level (`top`) an object or
    array is a data field holding parsed JSON, and AWS drops a JSON body matched with a
    plain-string rule, so no leaf rule matches it (`{"body": [{"exists": false}]}` too).
    """
    non_leaf_ok = absent_ok and not top

    def match_other(value: Any) -> bool:
        kind = type(value)
        if kind is int or kind is float or kind is bool or value is None:
            return test(value)
        if value is _MISSING:
            return absent_ok
        if kind is list and not top:
            values = _leaf_values(value, [])
            if not values:
                return non_leaf_ok
            return any(test(v) for v in values)
        if value is _OPAQUE:
            return False
        return non_leaf_ok

    if strings_only:

        def match(value: Any) -> bool:
            if type(value) is str:
                return value in strings
            return match_other(value)

    else:

        def match(value: Any) -> bool:
            if type(value) is str:
                return test(value)
            return match_other(value)

    return match


def _object_matcher(
    fields: tuple[tuple[str, Matcher], ...], branches: tuple[Matcher, ...]
) -> Matcher:
    """An object pattern against whatever the record holds there.

    An absent object matches only if every condition under it accepts absence (all
    `exists: false`); a scalar or opaque value never matches an object pattern. A dict
    (what views hold) takes the short path; a one-field pattern, the usual `{"body": ..}`,
    skips the loop.
    """

    def match_mapping(record: Mapping[str, Any]) -> bool:
        get = record.get
        for key, matcher in fields:
            if not matcher(get(key, _MISSING)):
                return False
        return not branches or _first_true(branches, record)

    when_absent = match_mapping({})

    def match_other(value: Any) -> bool:
        if value is _MISSING:
            return when_absent
        if isinstance(value, list):
            return any(match(v) for v in value)
        if isinstance(value, Mapping):
            return match_mapping(value)
        return False

    if len(fields) == 1 and not branches:
        ((key, child),) = fields

        def match(value: Any) -> bool:
            if type(value) is dict:
                return child(value.get(key, _MISSING))
            return match_other(value)

    else:

        def match(value: Any) -> bool:
            if type(value) is dict:
                return match_mapping(value)
            return match_other(value)

    return match


def _describe(value: Any) -> str:
    """A short rendering of a JSON value for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."
