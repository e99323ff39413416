#!/usr/bin/env python3
"""Checks svmm's API against its OpenAPI description, for ServeTests:

  check-responses.py SPEC.yaml API.md DIR

1. SPEC is a valid OpenAPI 3.0 document (openapi-spec-validator).
2. Its operations, and each one's status codes, are exactly the rows of the
   facts table in API.md (columns: path, method, statuses).
3. Every exchange kept in DIR (resp.*.request: "METHOD PATH"; .meta:
   "STATUS CONTENT-TYPE"; .body) has a status the operation lists, and a
   body valid against that response's schema (openapi-schema-validator);
   a request to a path or method SPEC does not have must have been refused
   with 400 and an Error body.

Prints one line per problem and "checked N exchanges, P problems"; exit 1 on any problem.
"""
import glob
import json
import os
import re
import sys

import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

problems = []


def facts_table(path):
    rows = {}
    lines = open(path, encoding="utf-8").read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| path | method | statuses |"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(cells[0].strip("`"), cells[1].lower())] = {s.strip() for s in cells[2].split(",")}
    return rows


def operation_for(spec, method, path):
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


def schema_validator(spec, schema):
    root = dict(schema)
    root["components"] = spec["components"]
    return OAS30Validator(root)


def resolve(spec, node):
    while "$ref" in node:
        name = node["$ref"].split("/")
        node = spec
        for part in name[1:]:
            node = node[part]
    return node


def main(spec_path, table_path, directory):
    spec = yaml.safe_load(open(spec_path, encoding="utf-8"))
    validate(spec)
    table = facts_table(table_path)
    operations = {(p, m): set(op["responses"]) for p, item in spec["paths"].items()
                  for m, op in item.items() if m in ("get", "put", "patch")}
    for key in sorted(set(table) | set(operations)):
        if table.get(key) != operations.get(key):
            problems.append(f"{key[1].upper()} {key[0]}: the facts table says {sorted(table.get(key, []))}, the OpenAPI description {sorted(operations.get(key, []))}")
    error_schema = schema_validator(spec, {"$ref": "#/components/schemas/Error"})
    checked = 0
    for request in sorted(glob.glob(os.path.join(directory, "resp.*.request"))):
        base = request[: -len(".request")]
        method, path = open(request).read().split()
        status, _, content_type = open(base + ".meta").read().partition(" ")
        body = open(base + ".body", "rb").read() if os.path.exists(base + ".body") else b""
        checked += 1
        where = f"{method} {path} -> {status}"
        template, op = operation_for(spec, method, path)
        if op is None:
            if status != "400":
                problems.append(f"{where}: no such operation, and not refused with 400")
            else:
                errors = list(error_schema.iter_errors(json.loads(body)))
                if errors:
                    problems.append(f"{where}: {errors[0].message}")
            continue
        response = op["responses"].get(status) or (op["responses"].get("default") if status.startswith("5") else None)
        if response is None:
            problems.append(f"{where}: status not among {sorted(op['responses'])}")
            continue
        response = resolve(spec, response)
        content = response.get("content")
        if not content:
            if body:
                problems.append(f"{where}: a body where the description has none: {body[:80]!r}")
            continue
        media = content_type.strip().split(";")[0]
        if media not in content:
            problems.append(f"{where}: content type {media!r}, not one of {sorted(content)}")
            continue
        schema = content[media]["schema"]
        value = json.loads(body) if media == "application/json" else body.decode()
        errors = list(schema_validator(spec, schema).iter_errors(value))
        if errors:
            problems.append(f"{where}: {errors[0].message} (body {body[:200]!r})")
    for p in problems:
        print(p)
    print(f"checked {checked} exchanges, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
