"""Reduce OpenAPI documents to comparable shapes: operations, statuses, headers, schema fields."""

from __future__ import annotations

from typing import Any

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def json_types(doc: dict[str, Any], schema: Any) -> frozenset[str]:
    schema = resolve(doc, schema)
    if not isinstance(schema, dict):
        return frozenset()
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return frozenset().union(*(json_types(doc, s) for s in schema[key]))
    kind = schema.get("type")
    if isinstance(kind, list):
        return frozenset(kind)
    if isinstance(kind, str):
        return frozenset({kind})
    if "enum" in schema:
        return frozenset({"string"})
    if "properties" in schema:
        return frozenset({"object"})
    return frozenset({"any"})


def enum_of(doc: dict[str, Any], schema: Any) -> frozenset[Any]:
    schema = resolve(doc, schema)
    if not isinstance(schema, dict):
        return frozenset()
    if "enum" in schema:
        return frozenset(v for v in schema["enum"] if v is not None)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return frozenset().union(*(enum_of(doc, s) for s in schema[key]))
    return frozenset()


def object_shape(doc: dict[str, Any], schema: Any) -> dict[str, Any]:
    """{"required": [...], "fields": {name: (types, enum)}} of an object schema (first object branch)."""
    schema = resolve(doc, schema)
    if isinstance(schema, dict):
        for key in ("anyOf", "oneOf"):
            for branch in schema.get(key, []):
                if "properties" in resolve(doc, branch):
                    return object_shape(doc, branch)
    if not isinstance(schema, dict) or "properties" not in schema:
        return {"required": [], "fields": {}}
    return {
        "required": sorted(schema.get("required", [])),
        "fields": {
            name: (sorted(json_types(doc, prop)), sorted(map(str, enum_of(doc, prop))))
            for name, prop in schema["properties"].items()
        },
    }


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, item in doc.get("paths", {}).items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def operation_shape(doc: dict[str, Any], op: dict[str, Any], *, ignore_headers: set[str]) -> dict[str, Any]:
    responses = {}
    for status, response in op.get("responses", {}).items():
        response = resolve(doc, response)
        content = response.get("content", {})
        headers = sorted(h for h in response.get("headers", {}) if h not in ignore_headers)
        json_schema = content.get("application/json", {}).get("schema")
        responses[str(status)] = {
            "media": sorted(content),
            "headers": headers,
            "body": object_shape(doc, json_schema) if json_schema else None,
        }
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    params = sorted((p["in"], p["name"]) for p in (resolve(doc, p) for p in op.get("parameters", [])))
    return {
        "operationId": op.get("operationId"),
        "parameters": params,
        "request": object_shape(doc, body) if body else None,
        "responses": responses,
    }
