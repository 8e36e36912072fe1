"""A second door to the S3 server of ``tests/support/s3_server.py``: moto's S3 app on another loopback port,
over the same buckets (moto keeps them in this process), calling ``trip`` with each request before it is served.
A crash test kills a writer at an exact request this way, with no hook in the code under test. A request ``trip``
answers True for is refused, never served: a small body is already in the server's buffer when the writer dies,
and serving it would write what the dead writer never got to write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Thread
from typing import Any

from tests.support.s3_server import S3Endpoint
from tests.support.servers import free_port


@contextmanager
def moto_s3_tripwire(trip: Callable[[dict[str, Any]], bool]) -> Iterator[S3Endpoint]:
    """An endpoint whose every request's WSGI environ goes to ``trip`` first; stopped on exit."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)

    def watched(environ: dict[str, Any], start_response: Any) -> Any:
        if trip(environ):
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    port = free_port()
    server = make_server("127.0.0.1", port, watched, threaded=True, request_handler=MotoRequestHandler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        thread.join()
