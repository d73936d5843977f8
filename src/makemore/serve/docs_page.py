"""/docs: the JSON API described from its OpenAPI schema, as one plain HTML page (FastAPI's own docs pages load
their scripts from a CDN, and this server must work offline). The raw schema is at /openapi.json."""

from __future__ import annotations

import html
import json
from typing import Any


def docs_html(schema: dict[str, Any]) -> str:
    components = schema.get("components", {}).get("schemas", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>makemore API</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>",
        "<link rel='stylesheet' href='/static/style.css'></head><body class='docs'><main>",
        "<h1>makemore JSON API</h1>",
        '<p>Errors are <code>{"error": "one line"}</code> with a 4xx status. A server started with a token '
        "wants it on every call: <code>Authorization: Bearer TOKEN</code>. The schema: "
        "<a href='/openapi.json'>/openapi.json</a>. The page: <a href='/'>/</a>.</p>",
    ]
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parts.append(f"<section class='endpoint'><h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(operation.get('summary', ''))}</p>")
            params = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
            if params:
                parts.append(f"<p>query: <code>{html.escape(', '.join(params))}</code></p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body and "$ref" in body:
                body = components.get(body["$ref"].rsplit("/", 1)[-1], {})
            if body:
                parts.append(fields_table(body))
            parts.append("</section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def fields_table(model: dict[str, Any]) -> str:
    rows = ["<table><tr><th>field</th><th>type</th><th>default</th><th>meaning</th></tr>"]
    required = set(model.get("required", []))
    for name, field in model.get("properties", {}).items():
        kinds = [field.get("type")] + [option.get("type") for option in field.get("anyOf", [])]
        kind = " | ".join(k for k in kinds if k)
        default = "required" if name in required else json.dumps(field.get("default"))
        meaning = field.get("description", "")
        rows.append(
            f"<tr><td><code>{name}</code></td><td>{html.escape(kind)}</td><td><code>{html.escape(default)}</code>"
            f"</td><td>{html.escape(meaning)}</td></tr>"
        )
    doc = model.get("description", "")
    return (f"<p>{html.escape(doc)}</p>" if doc else "") + "".join(rows) + "</table>"
