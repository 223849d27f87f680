"""What a browser tab does over HTTP when a user searches, without the browser: the page's own protocol.

Gradio's page sends a tile as ``POST /gradio_api/upload``, runs the event with ``POST /gradio_api/queue/join`` and
reads its result from the session's server-sent-event stream (``GET /gradio_api/queue/data``) the moment it is
sent; then it fetches the output's files (thumbnails, preview, map), six at a time over kept-alive connections as
browsers do. ``gradio_client`` speaks the same protocol but polls its event queue every 50 ms
(``gradio_client.utils.get_pred_from_sse_v1_v2``) and downloads files one by one, so its latency is the API
user's, not the page's. Without ``cache`` every file is fetched on every search (a cold cache, the strict
reading); with it a file is reused while its ``Cache-Control: max-age`` says it is fresh, as a browser's cache
does (no heuristic freshness: a response without max-age is fetched again).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BROWSER_CONNECTIONS = 6  # per host, Chromium's and Firefox's limit for HTTP/1.1
MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass
class Timing:
    """Milliseconds of one search as the page sees it."""

    upload: float  # the tile sent
    response: float  # from the click (join) to the result's event
    files: float  # every output file fetched (or reused from the cache), six at a time
    n_files: int
    fetched: int  # of them, asked of the server

    @property
    def total(self) -> float:
        return self.upload + self.response + self.files


def file_urls(value: Any, found: list[str] | None = None) -> list[str]:
    """The URLs of every file (``gradio.FileData``) in an event's output data, in order."""
    found = [] if found is None else found
    if isinstance(value, dict):
        if value.get("meta", {}).get("_type") == "gradio.FileData" and value.get("url"):
            found.append(value["url"])
        else:
            for v in value.values():
                file_urls(v, found)
    elif isinstance(value, list):
        for v in value:
            file_urls(v, found)
    return found


class PageClient:
    """One browser tab on a gradio app at ``url``: one session, kept-alive connections."""

    def __init__(self, url: str, timeout: float = 60.0, cache: bool = False) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                 limits=httpx.Limits(max_connections=BROWSER_CONNECTIONS + 1))
        self.session = uuid.uuid4().hex[:11]
        config = self.http.get("/config").raise_for_status().json()
        kinds = {c["id"]: c.get("type") for c in config["components"]}
        named = [d for d in config["dependencies"] if d.get("api_name")]
        self.fn_index = {d["api_name"]: d["id"] for d in named}
        self.is_state = {d["api_name"]: [kinds.get(i) == "state" for i in d["inputs"]] for d in named}
        self.fetchers = ThreadPoolExecutor(BROWSER_CONNECTIONS)
        self.cache: dict[str, float] | None = {} if cache else None  # url -> fresh until (monotonic seconds)
        self.lock = threading.Lock()

    def upload(self, path: str | Path) -> dict[str, Any]:
        """``path`` sent as the page's file input sends it; returns the FileData the event takes."""
        with open(path, "rb") as f:
            response = self.http.post("/gradio_api/upload", files={"files": (Path(path).name, f)})
        return {"path": response.raise_for_status().json()[0], "orig_name": Path(path).name,
                "meta": {"_type": "gradio.FileData"}}

    def run(self, api_name: str, data: list[Any]) -> list[Any]:
        """Run the event as the page does, ``data`` being the values of its inputs other than session states (the
        page sends those as null: the server holds them); returns its output data. Raises ``RuntimeError`` on an
        app error."""
        values = iter(data)
        data = [None if state else next(values, None) for state in self.is_state[api_name]]
        self.http.post("/gradio_api/queue/join", json={
            "data": data, "fn_index": self.fn_index[api_name], "session_hash": self.session,
            "event_data": None, "trigger_id": None}).raise_for_status()
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if not message.get("success", True):
                        output = message.get("output") or {}
                        raise RuntimeError(f"{api_name}: {output.get('error') or output or message}")
                    return message["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream closed before the result")

    def fetch(self, urls: list[str]) -> int:
        """Every URL fetched, six at a time, unless the cache holds it fresh; returns how many were asked of the
        server (an empty file is an error)."""
        now = time.monotonic()
        if self.cache is not None:
            with self.lock:
                urls = [u for u in dict.fromkeys(urls) if self.cache.get(u, 0.0) <= now]

        def get(url: str) -> None:
            response = self.http.get(url).raise_for_status()
            if not response.content:
                raise RuntimeError(f"empty file {url}")
            fresh = MAX_AGE.search(response.headers.get("cache-control", ""))
            if self.cache is not None and fresh:
                with self.lock:
                    self.cache[url] = now + int(fresh.group(1))

        list(self.fetchers.map(get, urls))
        return len(urls)

    def search(self, tile: str | Path, inputs: list[Any], api_name: str = "query") -> Timing:
        """Upload ``tile``, run ``api_name`` with it as the first input, fetch every output file."""
        start = time.perf_counter()
        sent = self.upload(tile)
        uploaded = time.perf_counter()
        data = self.run(api_name, [sent, *inputs])
        answered = time.perf_counter()
        urls = file_urls(data)
        fetched = self.fetch(urls)
        done = time.perf_counter()
        return Timing((uploaded - start) * 1e3, (answered - uploaded) * 1e3, (done - answered) * 1e3, len(urls),
                      fetched)

    def close(self) -> None:
        self.fetchers.shutdown()
        self.http.close()
