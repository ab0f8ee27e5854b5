"""A CustomResourceDefinition's own rules, applied offline the way the API server applies them.

``router-controller check`` must give the API server's verdict without a cluster, and the
CRD is edited as the API grows. So nothing here restates a StaticRoute rule: the rules are
read from the CRD at run time. Its OpenAPI v3 schema is walked as the apiextensions
server walks a structural schema (unknown fields, null pruning, defaults, then types,
enums, bounds, lengths, patterns, list types), and its ``x-kubernetes-validations`` CEL
rules are evaluated with ``cel-expr-python``.

Why that dependency: it is the CEL project's own Python runtime (bindings to cel-cpp, no
Python dependencies of its own), with the strings extension (``split``, ``trim``, ...)
the API server enables and RE2 regular expressions, the engine of Go's ``regexp``. A
pure-Python CEL without that extension would mean re-implementing those functions, and
Python's ``re`` would judge some patterns differently. It is imported only by the
offline check, never by the running operator.

As in the API server, CEL rules are skipped when the schema already found a type or an
enum error (the value a rule would see is not what the rule was written for), and rules
that compare with ``oldSelf`` (transition rules) do not apply to a new object.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem, as the API server words it: ``<field>: <type>: <detail>``."""

    field: str
    message: str
    blocking: bool = False  # a type or enum error: CEL rules are not evaluated

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class RuleError(Exception):
    """A CEL rule of the CRD does not compile here; the check cannot vouch for it."""


def _env() -> Any:
    # The libraries the API server's CEL environment has that cel-cpp also ships. The
    # Kubernetes-only ones (lists, regex find, url, ip, cidr, quantity, format) are not
    # available: a rule using them fails to compile and RuleError names it.
    return cel.NewEnv(
        variables={
            "self": cel.Type.DYN,
            "oldSelf": cel.Type.DYN,
            "s": cel.Type.STRING,
            "p": cel.Type.STRING,
        },
        extensions=[
            ext_strings.ExtStrings(2),  # Kubernetes enables strings version 2
            ext_optional.ExtOptional(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: str
    program: Any
    message: str
    message_expression: Any | None
    field_path: str
    reason: str


_OLD_SELF = re.compile(r"\boldSelf\b")


def _quote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _shown(value: Any) -> str:
    """A value the way the API server prints it in ``Invalid value: ...``."""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _quote(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


class Validator:
    """The rules of one version's ``openAPIV3Schema``, compiled once, applied to many objects."""

    def __init__(self, schema: Schema) -> None:
        self._schema = schema
        self._env = _env()
        self._rules: dict[int, list[_Rule]] = {}
        self._matches = self._env.compile("s.matches(p)", disable_check=True)
        problems: list[str] = []
        self._compile(schema, "", problems)
        if problems:
            raise RuleError("; ".join(problems))

    @property
    def rule_count(self) -> int:
        """How many CEL rules were compiled (every one of the schema's, or RuleError)."""
        return sum(len(rules) for rules in self._rules.values())

    @classmethod
    def for_version(cls, crd: Schema, version: str) -> Validator:
        for served in crd["spec"]["versions"]:
            if served["name"] == version:
                return cls(served["schema"]["openAPIV3Schema"])
        raise KeyError(f"the CRD has no version {version}")

    # --- compiling ----------------------------------------------------------------

    def _compile(self, schema: Schema, path: str, problems: list[str]) -> None:
        rules = []
        for raw in schema.get("x-kubernetes-validations", []):
            text = raw["rule"]
            try:
                program = self._env.compile(text)
                expression = raw.get("messageExpression")
                message_program = self._env.compile(expression) if expression else None
            except RuntimeError as err:
                problems.append(f"the CRD's rule at {path or '<root>'} ({text!r}): {err}")
                continue
            rules.append(
                _Rule(
                    rule=text,
                    program=program,
                    message=" ".join(str(raw.get("message", "")).split()),
                    message_expression=message_program,
                    field_path=raw.get("fieldPath", ""),
                    reason=raw.get("reason", "FieldValueInvalid"),
                )
            )
        if rules:
            self._rules[id(schema)] = rules
        for name, sub in schema.get("properties", {}).items():
            self._compile(sub, f"{path}.{name}" if path else name, problems)
        for key in ("items", "additionalProperties"):
            sub = schema.get(key)
            if isinstance(sub, dict):
                self._compile(sub, f"{path}[*]", problems)

    # --- validating ---------------------------------------------------------------

    def validate(
        self, obj: dict[str, Any], *, skip: frozenset[str] = frozenset()
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """The object as the API server would store it (defaults applied), and its errors.

        ``skip`` names top-level properties left out (``metadata``, which ObjectMeta
        validation covers, and ``status``, which a create through a status subresource
        drops).
        """
        value = copy.deepcopy(obj)
        errors: list[FieldError] = []
        pending: list[tuple[str, Any, Schema]] = []
        properties = self._schema.get("properties", {})
        for key in list(value):
            if key in skip:
                continue
            if key not in properties:
                errors.append(FieldError(key, f"unknown field {_quote(key)}"))
        for key, sub in properties.items():
            if key in skip:
                continue
            self._default(value, key, sub)
            if key in value:
                value[key] = self._walk(value[key], sub, key, errors, pending)
        errors.extend(
            FieldError(field, "Required value")
            for field in self._schema.get("required", [])
            if field not in value and field not in skip
        )
        if id(self._schema) in self._rules:
            # Rules at the root see metadata.name and generateName, nothing else of it.
            meta = value.get("metadata")
            root = dict(value)
            if isinstance(meta, dict):
                root["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
            pending.append(("", root, self._schema))
        if any(error.blocking for error in errors):
            errors.append(
                FieldError(
                    "",
                    "some validation rules were not checked because the object was invalid; "
                    "correct the existing errors to complete validation",
                )
            )
        else:
            for path, node, schema in pending:
                errors.extend(self._evaluate(path, node, schema))
        return value, errors

    @staticmethod
    def _default(parent: dict[str, Any], key: str, schema: Schema) -> None:
        # Nulls of non-nullable fields are pruned, then defaults fill what is missing.
        if key in parent and parent[key] is None and not schema.get("nullable"):
            del parent[key]
        if key not in parent and "default" in schema:
            parent[key] = copy.deepcopy(schema["default"])

    def _walk(
        self,
        value: Any,
        schema: Schema,
        path: str,
        errors: list[FieldError],
        pending: list[tuple[str, Any, Schema]],
    ) -> Any:
        if value is None and schema.get("nullable"):
            return value
        kind = schema.get("type")
        if schema.get("x-kubernetes-int-or-string"):
            if not (_TYPES["integer"](value) or isinstance(value, str)):
                errors.append(
                    FieldError(
                        path,
                        f"Invalid value: {_shown(value)}: {path} in body must be of type "
                        f"integer or string: {_quote(_type_name(value))}",
                        blocking=True,
                    )
                )
                return value
        elif kind and not _TYPES[kind](value):
            errors.append(
                FieldError(
                    path,
                    f"Invalid value: {_quote(_type_name(value))}: {path} in body must be of "
                    f"type {kind}: {_quote(_type_name(value))}",
                    blocking=True,
                )
            )
            return value
        if isinstance(value, dict):
            self._object(value, schema, path, errors, pending)
        elif isinstance(value, list):
            self._array(value, schema, path, errors, pending)
        else:
            self._scalar(value, schema, path, errors)
        self._junctions(value, schema, path, errors)
        if id(schema) in self._rules:
            pending.append((path, value, schema))
        return value

    def _object(
        self,
        value: dict[str, Any],
        schema: Schema,
        path: str,
        errors: list[FieldError],
        pending: list[tuple[str, Any, Schema]],
    ) -> None:
        properties: dict[str, Schema] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if properties or extra is False:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.extend(
                    FieldError(f"{path}.{key}", f"unknown field {_quote(f'{path}.{key}')}")
                    for key in value
                    if key not in properties
                )
            for key, sub in properties.items():
                self._default(value, key, sub)
                if key in value:
                    value[key] = self._walk(value[key], sub, f"{path}.{key}", errors, pending)
        elif isinstance(extra, dict):
            for key in list(value):
                self._default(value, key, extra)
                if key in value:
                    value[key] = self._walk(value[key], extra, f"{path}[{key}]", errors, pending)
        errors.extend(
            FieldError(f"{path}.{field}", "Required value")
            for field in schema.get("required", [])
            if field not in value
        )
        limit = schema.get("maxProperties")
        if limit is not None and len(value) > limit:
            errors.append(
                FieldError(path, f"Too many: {len(value)}: must have at most {limit} items")
            )
        limit = schema.get("minProperties")
        if limit is not None and len(value) < limit:
            errors.append(
                FieldError(path, f"Invalid value: {len(value)}: must have at least {limit} items")
            )

    def _array(
        self,
        value: list[Any],
        schema: Schema,
        path: str,
        errors: list[FieldError],
        pending: list[tuple[str, Any, Schema]],
    ) -> None:
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                if item is None and not items.get("nullable"):
                    errors.append(
                        FieldError(f"{path}[{i}]", "Invalid value: null: must not be null")
                    )
                    continue
                value[i] = self._walk(item, items, f"{path}[{i}]", errors, pending)
        limit = schema.get("maxItems")
        if limit is not None and len(value) > limit:
            errors.append(
                FieldError(path, f"Too many: {len(value)}: must have at most {limit} items")
            )
        limit = schema.get("minItems")
        if limit is not None and len(value) < limit:
            errors.append(
                FieldError(path, f"Invalid value: {len(value)}: should have at least {limit} items")
            )
        list_type = schema.get("x-kubernetes-list-type")
        if list_type in ("set", "map"):
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen: set[str] = set()
            for i, item in enumerate(value):
                identity = (
                    _quote({k: item.get(k) for k in keys})
                    if list_type == "map" and isinstance(item, dict)
                    else _quote(item)
                )
                if identity in seen:
                    errors.append(FieldError(f"{path}[{i}]", f"Duplicate value: {identity}"))
                seen.add(identity)

    def _scalar(self, value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            supported = ", ".join(_quote(v) for v in enum)
            errors.append(
                FieldError(
                    path,
                    f"Unsupported value: {_shown(value)}: supported values: {supported}",
                    blocking=True,
                )
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            self._bounds(value, schema, path, errors)
        if isinstance(value, str):
            length = len(value)  # characters, as the API server counts them
            limit = schema.get("maxLength")
            if limit is not None and length > limit:
                errors.append(FieldError(path, f"Too long: may not be more than {limit} bytes"))
            limit = schema.get("minLength")
            if limit is not None and length < limit:
                errors.append(
                    FieldError(
                        path,
                        f"Invalid value: {_shown(value)}: {path} in body should be at least "
                        f"{limit} chars long",
                    )
                )
            pattern = schema.get("pattern")
            if pattern is not None and not self._match(value, pattern):
                errors.append(
                    FieldError(
                        path,
                        f"Invalid value: {_shown(value)}: {path} in body should match '{pattern}'",
                    )
                )

    def _junctions(self, value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
        """allOf, anyOf, oneOf and not: value validations only, in a structural schema."""

        def fails(sub: Schema) -> bool:
            found: list[FieldError] = []
            self._walk(copy.deepcopy(value), sub, path, found, [])
            return bool(found)

        if any(fails(sub) for sub in schema.get("allOf", [])):
            errors.append(FieldError(path, "Invalid value: must validate all the schemas (allOf)"))
        anyof = schema.get("anyOf")
        if anyof and all(fails(sub) for sub in anyof):
            errors.append(
                FieldError(path, "Invalid value: must validate at least one schema (anyOf)")
            )
        oneof = schema.get("oneOf")
        if oneof and sum(not fails(sub) for sub in oneof) != 1:
            errors.append(
                FieldError(path, "Invalid value: must validate one and only one schema (oneOf)")
            )
        negated = schema.get("not")
        if isinstance(negated, dict) and not fails(negated):
            errors.append(FieldError(path, "Invalid value: must not validate the schema (not)"))

    @staticmethod
    def _bounds(value: float, schema: Schema, path: str, errors: list[FieldError]) -> None:
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            if schema.get("exclusiveMinimum") and value <= low:
                relation = f"greater than {low}"
            elif value < low:
                relation = f"greater than or equal to {low}"
            else:
                relation = ""
            if relation:
                errors.append(
                    FieldError(path, f"Invalid value: {value}: {path} in body should be {relation}")
                )
        if high is not None:
            if schema.get("exclusiveMaximum") and value >= high:
                relation = f"less than {high}"
            elif value > high:
                relation = f"less than or equal to {high}"
            else:
                relation = ""
            if relation:
                errors.append(
                    FieldError(path, f"Invalid value: {value}: {path} in body should be {relation}")
                )

    def _match(self, value: str, pattern: str) -> bool:
        # RE2, through CEL's matches(): the semantics of the API server's Go regexp.
        result = self._matches.eval(data={"s": value, "p": pattern})
        return result.type() == cel.Type.BOOL and result.value() is True

    # --- CEL ------------------------------------------------------------------------

    def _evaluate(self, path: str, value: Any, schema: Schema) -> list[FieldError]:
        errors = []
        type_name = _type_name(value)
        for rule in self._rules[id(schema)]:
            if _OLD_SELF.search(rule.rule):
                continue  # a transition rule: nothing to compare a new object with
            result = rule.program.eval(data={"self": value})
            if result.type() == cel.Type.BOOL and result.value() is True:
                continue
            field = (path + rule.field_path).lstrip(".")
            if result.type() != cel.Type.BOOL:
                errors.append(
                    FieldError(
                        field,
                        f"Invalid value: {_quote(type_name)}: rule {rule.rule!r} could not be "
                        f"evaluated: {result.value()}",
                    )
                )
                continue
            message = rule.message or f"failed rule: {rule.rule}"
            if rule.message_expression is not None:
                custom = rule.message_expression.eval(data={"self": value})
                if custom.type() == cel.Type.STRING and str(custom.value()).strip():
                    message = str(custom.value())
            errors.append(FieldError(field, _worded(rule.reason, type_name, message)))
        return errors


def _worded(reason: str, type_name: str, message: str) -> str:
    if reason == "FieldValueRequired":
        return f"Required value: {message}"
    if reason == "FieldValueForbidden":
        return f"Forbidden: {message}"
    if reason == "FieldValueDuplicate":
        return f"Duplicate value: {message}"
    return f"Invalid value: {_quote(type_name)}: {message}"
