"""`/docs` (and `/redoc`) work on a host with no network: the page loads nothing from another
host, and everything it refers to is served by the server itself.

FastAPI's own pages load Swagger UI and Redoc from a CDN, and stay blank offline.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from server_harness import ServerProcess

POLICY = """\
version: 1
providers:
  mini: {type: openai_http, model: m-1, base_url: "http://127.0.0.1:9/v1", api_key: "k"}
tasks:
  default: {chain: [mini]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("server")
    policy = root / "routing.yaml"
    policy.write_text(POLICY)
    env = {"GATEWAY_API_KEYS": "gw-docs-client-key-51d0", "GATEWAY_POLICY_WATCH_S": "0"}
    with ServerProcess(policy, log_path=root / "server.log", env=env) as process:
        process.wait_ready()
        yield process


class References(HTMLParser):
    """Every URL a page refers to: src, href, action and url(...) in style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_style = tag == "style"
        for name, value in attrs:
            if name in {"src", "href", "action", "srcset", "data", "poster"} and value:
                self.urls.append(value)
            if name == "style" and value:
                self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", value)

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
            self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_page_works_offline(server: ServerProcess, page: str) -> None:
    response = httpx.get(server.url + page, follow_redirects=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "https://" not in html and "http://" not in html
    references = References()
    references.feed(html)
    assert references.urls, "the page links the OpenAPI document"
    for url in references.urls:
        absolute = urljoin(str(response.url), url)
        assert urlsplit(absolute).netloc == urlsplit(server.url).netloc, url
        if url.startswith("#"):
            continue
        assert httpx.get(absolute).status_code == 200, url
    assert any(
        urlsplit(urljoin(str(response.url), u)).path == "/openapi.json" for u in references.urls
    )
    # It says what the server serves: every route of the OpenAPI document.
    for path in httpx.get(server.url + "/openapi.json").json()["paths"]:
        assert path in html, path
