"""ObjectMeta's rules, as the API server applies them to a new custom resource.

A CRD's schema says nothing about ``metadata`` (the API server validates it as
ObjectMeta for every kind), so the offline check needs these rules of its own: the
fields ObjectMeta has (kubectl's default strict field validation refuses others), the
name (a DNS subdomain), the namespace (a DNS label), label keys and values, and
annotation keys and total size. They come from apimachinery's validation
(``ValidateObjectMeta``, ``IsQualifiedName``, ``IsValidLabelValue``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from router_controller.crdvalidation import FieldError

FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
ANNOTATIONS_MAX = 256 * 1024  # bytes of all keys and values together

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (at most 253)"
)
_LABEL_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
    "'-', and must start and end with an alphanumeric character (at most 63)"
)
_NAME_PART_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (at most 63)"
)


GENERATED_SUFFIX = 5  # random characters the API server appends to generateName
GENERATED_PREFIX_MAX = 63 - GENERATED_SUFFIX


def named(meta: Any) -> dict[str, Any]:
    """``meta`` with the name the API server would give it (from ``generateName``).

    The name is generated before validation, so rules on ``metadata.name`` (a CEL rule
    at the root, the default ConfigMap name) see one of this length. Without either,
    the name is empty (already an error of :func:`validate`).
    """
    if not isinstance(meta, dict):
        return {"name": ""}
    if isinstance(meta.get("name"), str) and meta["name"]:
        return meta
    prefix = str(meta.get("generateName") or "")[:GENERATED_PREFIX_MAX]
    return {**meta, "name": prefix + "x" * GENERATED_SUFFIX if prefix else ""}


def _qualified_name(key: str) -> str | None:
    """Why ``key`` is not a qualified name (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and _SUBDOMAIN.match(prefix)):
        return f"prefix part: {_SUBDOMAIN_RULE}"
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return f"name part {_NAME_PART_RULE}"
    return None


def _strings(meta: dict[str, Any], field: str, errors: list[FieldError]) -> dict[str, str]:
    value = meta.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(f"metadata.{field}", "Invalid value: must be a map of strings"))
        return {}
    good = {}
    for key, item in value.items():
        if isinstance(item, str):
            good[str(key)] = item
        else:
            errors.append(
                FieldError(
                    f"metadata.{field}[{key}]",
                    f"Invalid value: {json.dumps(item)}: must be a string (quote it in YAML)",
                )
            )
    return good


def validate(meta: Any) -> list[FieldError]:
    """The problems the API server would find in a new object's ``metadata``."""
    if not isinstance(meta, dict):
        return [FieldError("metadata.name", "Required value: name or generateName is required")]
    errors = [
        FieldError(f"metadata.{key}", f'unknown field "metadata.{key}"')
        for key in meta
        if key not in FIELDS
    ]
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        errors.append(
            FieldError("metadata.name", "Required value: name or generateName is required")
        )
    elif name and (not isinstance(name, str) or len(name) > 253 or not _SUBDOMAIN.match(name)):
        errors.append(
            FieldError("metadata.name", f"Invalid value: {json.dumps(name)}: {_SUBDOMAIN_RULE}")
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not _LABEL.match(namespace)
    ):
        errors.append(
            FieldError(
                "metadata.namespace", f"Invalid value: {json.dumps(namespace)}: {_LABEL_RULE}"
            )
        )
    for key, value in _strings(meta, "labels", errors).items():
        why = _qualified_name(key)
        if why is not None:
            errors.append(FieldError("metadata.labels", f"Invalid value: {json.dumps(key)}: {why}"))
        if value and (len(value) > 63 or not _NAME_PART.match(value)):
            errors.append(
                FieldError(
                    "metadata.labels",
                    f"Invalid value: {json.dumps(value)}: a valid label must be an empty string "
                    f"or {_NAME_PART_RULE.removeprefix('must ')}",
                )
            )
    annotations = _strings(meta, "annotations", errors)
    for key in annotations:
        why = _qualified_name(key.lower())
        if why is not None:
            errors.append(
                FieldError("metadata.annotations", f"Invalid value: {json.dumps(key)}: {why}")
            )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX:
        errors.append(
            FieldError(
                "metadata.annotations", f"Too long: must have at most {ANNOTATIONS_MAX} bytes"
            )
        )
    return errors
