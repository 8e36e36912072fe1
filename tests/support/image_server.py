"""A loopback image server with fault routes, for the fetch tests and the sourcing benchmark.

Faults live in the URL path so a plain url column (a parquet, a list of pairs) can carry them:

- ``/img/<name>``: the file under ``--root``, Content-Type by extension.
- ``/status/<code>/<key>?times=N&retry_after=S&then=<name>``: the first N requests for <key> answer <code>
  (with ``Retry-After: S`` when given); later ones serve image <name>. N defaults to "always".
- ``/slow/<seconds>/<name>``: waits, then serves the image.
- ``/html/<name>``, ``/json/<name>``: 200 with an HTML or JSON body.
- ``/lie/<name>``: the file's bytes under ``Content-Type: image/jpeg`` whatever they are.
- ``/chunked/<name>``: the image in chunked transfer encoding, so without a Content-Length.
- ``/redirect/<hops>/<name>``: a chain of <hops> 302 redirects ending at ``/img/<name>``.
- ``/drop/<name>``: closes the connection without answering.
- ``GET /stats``: request counts (total, per route, per path) and the most requests handled at once;
  ``POST /stats/reset`` clears them.

Run ``python -m tests.support.image_server --root DIR --port P``; it prints ``serving http://127.0.0.1:P`` when ready
and exits by itself after ``--idle-exit`` seconds without a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from tests.support.servers import free_port, wait_until_serving

ALWAYS = 10**9
CHUNK_BYTES = 16384


class RequestStats:
    """What the server saw: the fetch tests read it to prove request counts and concurrency."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self.in_flight = 0
        self.max_concurrent = 0

    def as_json(self) -> dict:
        return {
            "requests": self.total,
            "by_route": dict(self.by_route),
            "by_path": dict(self.by_path),
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
        }


def load_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative posix path, read once so serving costs no disk reads."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class IdleTimer:
    """Stops the server once nobody has asked anything for ``idle_s``, so a forgotten one cannot linger."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    async def wait_idle(self) -> None:
        while (left := self.last + self.idle_s - time.monotonic()) > 0:
            await asyncio.sleep(left)


def make_app(files: dict[str, bytes], idle: IdleTimer) -> web.Application:
    stats = RequestStats()
    status_counts: Counter[str] = Counter()

    def image(name: str, content_type: str | None = None) -> web.Response:
        if name not in files:
            raise web.HTTPNotFound(text=f"no file {name}")
        guessed = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=files[name], content_type=guessed)

    @web.middleware
    async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        idle.touch()
        if request.path.startswith("/stats"):
            return await handler(request)
        stats.total += 1
        stats.by_route[request.path.split("/", 2)[1]] += 1
        stats.by_path[request.path] += 1
        stats.in_flight += 1
        stats.max_concurrent = max(stats.max_concurrent, stats.in_flight)
        try:
            return await handler(request)
        finally:
            stats.in_flight -= 1

    async def img(request: web.Request) -> web.Response:
        return image(request.match_info["name"])

    async def status(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        status_counts[key] += 1
        if status_counts[key] <= int(request.query.get("times", ALWAYS)):
            headers = {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
            return web.Response(status=int(request.match_info["code"]), text="fault", headers=headers)
        if "then" not in request.query:
            raise web.HTTPNotFound(text="no then= image")
        return image(request.query["then"])

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return image(request.match_info["name"])

    async def html(request: web.Request) -> web.Response:
        return web.Response(text=f"<html><body>{request.match_info['name']}</body></html>", content_type="text/html")

    async def json_body(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"]})

    async def lie(request: web.Request) -> web.Response:
        return image(request.match_info["name"], content_type="image/jpeg")

    async def chunked(request: web.Request) -> web.StreamResponse:
        body = files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound(text=f"no file {request.match_info['name']}")
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), CHUNK_BYTES):
            await response.write(body[start : start + CHUNK_BYTES])
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        hops, name = int(request.match_info["hops"]), request.match_info["name"]
        target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/img/{name}"
        raise web.HTTPFound(target)

    async def drop(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # aiohttp drops a cancelled handler's response without logging

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    async def reset_stats(request: web.Request) -> web.Response:
        stats.reset()
        status_counts.clear()
        return web.json_response({"reset": True})

    app = web.Application(middlewares=[count])
    app.add_routes(
        [
            web.get("/img/{name:.+}", img),
            web.get("/status/{code:\\d+}/{key}", status),
            web.get("/slow/{seconds:[0-9.]+}/{name:.+}", slow),
            web.get("/html/{name:.+}", html),
            web.get("/json/{name:.+}", json_body),
            web.get("/lie/{name:.+}", lie),
            web.get("/chunked/{name:.+}", chunked),
            web.get("/redirect/{hops:\\d+}/{name:.+}", redirect),
            web.get("/drop/{name:.+}", drop),
            web.get("/stats", get_stats),
            web.post("/stats/reset", reset_stats),
        ]
    )
    return app


async def serve(root: Path, port: int, idle_exit_s: float) -> None:
    idle = IdleTimer(idle_exit_s)
    # handler_cancellation: a handler whose client went away stops counting as in flight at once.
    runner = web.AppRunner(make_app(load_files(root), idle), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"serving http://127.0.0.1:{port}", flush=True)
    try:
        await idle.wait_idle()
    finally:
        await runner.cleanup()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-exit", type=float, default=600.0, help="seconds without a request before exiting")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(args.root, args.port, args.idle_exit))


class ImageServer:
    """``with ImageServer(root) as srv:`` runs the server as a subprocess on a free loopback port."""

    def __init__(self, root: Path | str, idle_exit_s: float = 600.0) -> None:
        self.root = Path(root)
        self.idle_exit_s = idle_exit_s
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url("stats"), timeout=10) as response:
            return json.load(response)

    def reset_stats(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url("stats/reset"), method="POST"), timeout=10).close()

    def __enter__(self) -> ImageServer:
        # A file, not a pipe: a pipe nobody drains would stall the server once its buffer fills.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.image_server",
                "--root",
                str(self.root),
                "--port",
                str(self.port),
                "--idle-exit",
                str(self.idle_exit_s),
            ],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        try:
            wait_until_serving(self.url("stats"), self.proc, 30.0, "image server", self.log_tail)
        except BaseException:
            self.__exit__()
            raise
        return self

    def log_tail(self, chars: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


if __name__ == "__main__":
    main()
