"""Helpers for the verify tests: a validator for the subset of JSON Schema verify's schema uses.

No jsonschema package is installed; this checks ``type``, ``required``,
``properties``, ``additionalProperties: false``, ``items``, ``enum``, ``const`` and
``minimum`` (JSON Schema 2020-12 validation vocabulary, §6.1-6.5), which is all
:data:`egresswatch.verify.JSON_SCHEMA` uses.
"""

from __future__ import annotations

from typing import Any

from egresswatch.verify import JSON_SCHEMA

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value``, as 'path: problem' strings."""
    errors: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = False
        for name in names:
            if name in ("integer", "number") and isinstance(value, bool):
                continue  # bool is an int subclass in Python, not in JSON
            if isinstance(value, _TYPES[name]):
                ok = True
        if not ok:
            return [f"{path}: {type(value).__name__} is not {names}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += schema_errors(sub, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def assert_schema(doc: Any) -> None:
    errors = schema_errors(doc, JSON_SCHEMA)
    assert not errors, "\n".join(errors[:20])
