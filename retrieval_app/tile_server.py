"""The archive's tiles over HTTP from a process of their own, beside the gradio server.

Every result thumbnail is a file the page fetches: 20 per search with two models side by side. Served through
gradio's file route, each cost the app's one interpreter about 1.7 ms of CPU (its middleware stack, the static-
path checks, a file response: 88 against 54 ms of server CPU per search without and with this server,
``benchmarks/bench_app.py``), and every one of them waited for the same interpreter lock as the searches. Here a small ASGI app in its own process answers ``GET /<root>/<path>`` for
the files under a fixed list of folders (the archives, the rendered images), with an ETag and
``Cache-Control: public, max-age`` as ``http_cache`` gives gradio's files, so the thumbnails are fetched in
parallel with the searches, on the other core.

The page learns the tiles' address from the request that asked for them (the Host header's name, the tile
server's port). Behind a proxy (``X-Forwarded-Host``) or with no request (a direct call) the app falls back to
gradio's file route, which serves the same files; so does ``python -m retrieval_app --no-tile-server``.

    python -m retrieval_app.tile_server --port 7861 --root /path/to/archive --root /path/to/images
"""

from __future__ import annotations

import argparse
import hashlib
import mimetypes
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .http_cache import MAX_AGE

FORWARDED = ("x-forwarded-host", "x-forwarded-proto", "forwarded")


class TileApp:
    """ASGI app: ``GET`` / ``HEAD`` of ``/<n>/<relative path>`` -> the file under ``roots[n]``; 404 for anything
    else (an unknown root, a path leaving its root, a folder, a missing file); 304 when the ETag matches."""

    def __init__(self, roots: list[str | Path], max_age: int = MAX_AGE) -> None:
        self.roots = [os.path.realpath(root) for root in roots]
        self.cache_control = f"public, max-age={max_age}".encode()

    def resolve(self, url_path: str) -> str | None:
        """The file ``url_path`` names, or None when it names none that may be served."""
        number, _, relative = unquote(url_path).lstrip("/").partition("/")
        if not number.isdigit() or int(number) >= len(self.roots) or not relative or "\x00" in relative:
            return None
        root = self.roots[int(number)]
        path = os.path.realpath(os.path.join(root, relative))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            return None
        return path

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":  # run with lifespan="off": nothing else arrives
            return
        path = self.resolve(scope["path"]) if scope["method"] in ("GET", "HEAD") else None
        if path is None:
            await _respond(send, 404, [(b"content-type", b"text/plain")], b"not found\n")
            return
        stat = os.stat(path)
        etag = f'"{hashlib.sha1(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:20]}"'.encode()
        headers = [(b"etag", etag), (b"cache-control", self.cache_control)]
        if etag in dict(scope["headers"]).get(b"if-none-match", b"").split(b", "):
            await _respond(send, 304, headers, b"")
            return
        with open(path, "rb") as f:  # a tile is small: read in the loop, as one body
            body = f.read()
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers.append((b"content-type", kind.encode()))
        await _respond(send, 200, headers, b"" if scope["method"] == "HEAD" else body, len(body))


async def _respond(send, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                   length: int | None = None) -> None:
    headers = [*headers, (b"content-length", str(len(body) if length is None else length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TileServer:
    """The tile server as a child process: ``with TileServer(roots, host) as tiles: ... tiles.url(path, headers)``.

    The child stops with the context, and on its own when its parent is gone."""

    def __init__(self, roots: list[str | Path], host: str = "127.0.0.1", port: int | None = None) -> None:
        self.roots = [os.path.realpath(root) for root in roots]
        # (root number, prefix): each root as given and resolved, so a path is placed without a syscall
        self.prefixes = sorted({(n, os.path.abspath(p)) for n, root in enumerate(roots)
                                for p in (root, self.roots[n])}, key=lambda item: -len(item[1]))
        self.host, self.port = host, port or _free_port(host)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TileServer:
        command = [sys.executable, "-m", "retrieval_app.tile_server", "--host", self.host, "--port", str(self.port),
                   "--parent", str(os.getpid()), *[arg for root in self.roots for arg in ("--root", root)]]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the tile server exited with {self.process.returncode} (port {self.port})")
            try:
                with socket.create_connection((_connect_host(self.host), self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the tile server did not listen on port {self.port} within 60 s") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def url(self, path: str, headers: Mapping[str, str] | None) -> str | None:
        """The tile server's URL of ``path`` for the page that sent ``headers`` (its request's), or None where
        the page cannot reach it directly (no request, a proxy in between, a file outside the roots)."""
        if not headers or any(name in headers for name in FORWARDED) or not headers.get("host"):
            return None
        path = os.path.abspath(path)
        for number, prefix in self.prefixes:
            if path.startswith(prefix + os.sep):
                host = urlsplit(f"//{headers['host']}").hostname  # the name the page used, without its port
                host = f"[{host}]" if host and ":" in host else host
                return f"http://{host}:{self.port}/{number}/{quote(path[len(prefix) + 1:])}"
        return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _exit_with(parent: int) -> None:
    """Exit this process when ``parent`` is gone (a killed app must not leave its tile server behind)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m retrieval_app.tile_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", action="append", required=True, help="a folder whose files are served (repeat)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent:
        _exit_with(args.parent)
    uvicorn.run(TileApp(args.root), host=args.host, port=args.port, log_level="warning", access_log=False,
                lifespan="off")


if __name__ == "__main__":
    main()
