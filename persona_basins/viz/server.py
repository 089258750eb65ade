"""Serve the explorer on 127.0.0.1 with the standard library.

Routes: ``/`` (the page, rebuilt on each load so fresh results show up) and ``/runs/<i>/figures/<file>``
(a run's figures). Anything else is 404; a figure path that resolves outside its ``figures/`` folder is 403;
a request whose Host header is not this loopback address is 403 (DNS-rebinding guard).
"""

from __future__ import annotations

import signal
import sys
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .report import build_html
from .runs import FIGURE_EXT, check_run_dirs

HOST = "127.0.0.1"
READ_TIMEOUT_S = 10.0  # seconds a client may take to send its request line and headers
CONTENT_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
# The page is self-contained (inline scripts and styles, vendored plotly, embedded data, same-origin figures):
# nothing from any other origin, no fetches, no forms, no framing. Sent with every answer, errors included.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _handler(run_dirs: list[Path]):
    roots = [Path(r).resolve() for r in run_dirs]

    class Handler(BaseHTTPRequestHandler):
        server_version = "persona-basins"
        sys_version = ""
        error_content_type = "text/plain; charset=utf-8"
        error_message_format = "%(code)d %(message)s\n"
        timeout = READ_TIMEOUT_S  # a half-sent request must not hold a server thread forever

        def log_message(self, fmt, *args):  # quiet; errors are answered, never printed as tracebacks
            pass

        def end_headers(self):
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            super().end_headers()

        def _send(self, code: int, body: bytes, ctype: str, head: bool = False):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _text(self, code: int, msg: str, head: bool):
            self._send(code, (msg + "\n").encode(), "text/plain; charset=utf-8", head)

        def _figure(self, parts: list[str], head: bool):
            i = parts[2]
            if not (i.isascii() and i.isdigit() and len(i) < 8 and int(i) < len(roots)):
                return self._text(404, "not found", head)
            # Resolved against the run folder itself, so a symlinked figures/ folder (or any link on the way)
            # that leads out of the run is refused like a ``..`` path.
            figures = roots[int(i)] / "figures"
            try:
                target = (figures / parts[4]).resolve()
                if not target.is_relative_to(figures):
                    return self._text(403, "forbidden path", head)
                if target.suffix.lower() not in FIGURE_EXT or not target.is_file():
                    return self._text(404, "not found", head)
                body = target.read_bytes()
            except OSError:  # a name too long, a file that vanished or cannot be read
                return self._text(404, "not found", head)
            return self._send(200, body, CONTENT_TYPES[target.suffix.lower()], head)

        def _route(self, head: bool):
            port = self.server.server_address[1]
            host = (self.headers.get("Host") or "").strip()
            if host not in (f"{HOST}:{port}", f"localhost:{port}"):
                return self._text(403, "forbidden host", head)
            raw = urlsplit(self.path).path
            path = unquote(raw, errors="replace")
            if any(
                ord(c) < 32 or ord(c) == 127 for c in path
            ):  # NUL and other control bytes: no file has them
                return self._text(400, "bad path", head)
            if path in ("/", "/index.html"):
                html = build_html(run_dirs, lambda r, name: f"/runs/{r['index']}/figures/{quote(name)}")
                return self._send(200, html.encode("utf-8"), "text/html; charset=utf-8", head)
            if path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon", head)
            parts = path.split("/")
            if len(parts) == 5 and parts[0] == "" and parts[1] == "runs" and parts[3] == "figures":
                return self._figure(parts, head)
            if ".." in path.split("/") or "\\" in path:
                return self._text(403, "forbidden path", head)
            return self._text(404, "not found", head)

        def _answer(self, head: bool):
            try:
                self._route(head)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away
            except Exception as e:  # noqa: BLE001 - answer every request; a one-line 500, never a traceback
                try:
                    line = str(e).splitlines()[0] if str(e) else ""
                    self._text(500, f"server error: {type(e).__name__}: {line}"[:300], head)
                except OSError:
                    pass

        def do_GET(self):  # noqa: N802
            self._answer(head=False)

        def do_HEAD(self):  # noqa: N802
            self._answer(head=True)

    return Handler


def make_server(run_dirs, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """A server bound to 127.0.0.1 only (not yet serving) and its URL."""
    run_dirs = check_run_dirs(run_dirs)
    httpd = ThreadingHTTPServer((HOST, port), _handler(run_dirs))
    httpd.daemon_threads = True
    return httpd, f"http://{HOST}:{httpd.server_address[1]}/"


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(run_dirs, port: int = 0, open_browser: bool = True) -> int:
    """Serve the explorer until interrupted (Ctrl-C); prints the URL. Returns 0."""
    httpd, url = make_server(run_dirs, port)
    print(f"persona-basins explorer: {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        threading.Timer(0.3, lambda: webbrowser.open(url)).start()
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("persona-basins explorer: stopped", file=sys.stderr)
    finally:
        httpd.server_close()
        if main:
            signal.signal(signal.SIGTERM, old)
    return 0
