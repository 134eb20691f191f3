"""`GET /docs` (and `/redoc`): the routes as one plain HTML page, made from the OpenAPI document.

FastAPI's own pages load Swagger UI or Redoc (scripts, styles, fonts) from a CDN, so on a
host with no network they stay blank. This page has no script and refers to nothing but the
OpenAPI document beside it: it shows the same on an air-gapped host as anywhere else. Its
links are relative, so it works under a mount prefix too.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_PATHS = ("/docs", "/redoc")
"""Where FastAPI would serve Swagger UI and Redoc: both serve this page instead."""


def add_docs_routes(app: FastAPI) -> None:
    """Serve the page at `DOCS_PATHS` (create the app with `docs_url=None, redoc_url=None`)."""

    async def docs(request: Request) -> HTMLResponse:
        # Made from the app's OpenAPI document (which the app caches), on each request: the
        # route is rarely asked for, and the page stays what the document says.
        return HTMLResponse(docs_page(app.openapi()))

    for path in DOCS_PATHS:
        app.add_route(path, docs, methods=["GET"], include_in_schema=False)


_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

_STYLE = """\
body{font:15px/1.45 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .6rem;border-bottom:1px solid #ddd}
code{font:13px ui-monospace,monospace}
.m{font-weight:600}"""


def docs_page(schema: Mapping[str, Any]) -> str:
    """The page for `schema` (an OpenAPI document as FastAPI makes it)."""
    info = schema.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            rows.append(
                "<tr>"
                f'<td class="m">{method.upper()}</td>'
                f"<td><code>{escape(path)}</code></td>"
                f"<td>{_auth(operation)}</td>"
                f"<td>{escape(operation.get('summary', ''))}</td>"
                f"<td>{escape(', '.join(operation.get('responses', {})))}</td>"
                "</tr>"
            )
    summary = info.get("summary") or info.get("description") or ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>
{_STYLE}
</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>{escape(summary)}</p>
<p>The full description of every route, request and answer is the OpenAPI document,
<a href="openapi.json">openapi.json</a>: open it in any OpenAPI viewer or client generator.
This page is plain HTML made from it, with no scripts and nothing loaded from another host,
so it reads the same on a machine with no network.</p>
<table>
<thead><tr><th>Method</th><th>Path</th><th>Key</th><th>Summary</th><th>Answers</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def _auth(operation: Mapping[str, Any]) -> str:
    if not operation.get("security"):
        return "none"
    # Admin routes are the ones that can answer 403 for a client key.
    return "admin" if "403" in operation.get("responses", {}) else "client"
