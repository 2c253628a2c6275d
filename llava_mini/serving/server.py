"""An OpenAI-compatible HTTP server over one model, on the standard library (http.server), for the classroom.

    server = make_server(engine, host="127.0.0.1", port=8000, api_key=None)
    server.serve_forever()

    GET  /v1/models               the model, with its size and whether it sees images
    POST /v1/chat/completions     openai_api.parse_chat_request's body; "stream": true answers with server-sent
                                  events, one chunk per new piece of text, then `data: [DONE]`
    GET  /                        the classroom page (classroom.py: its files, gallery, blank image, heat maps)

Requests are read by a thread each and answered one at a time (one model, one lock): 32 clients at once all get
their answers, in turn. Every bad request is a JSON error {"error": {"message", "type", "code"}} with a 4xx status,
and the server keeps serving. With an API key, every request but the page's own files (`/`, `/static/...`, which
hold no data and reach no model) must carry `Authorization: Bearer KEY`; the page asks for the key and sends it. The
key is compared in constant time and never logged (the log line is the method, the path and the status).
"""
from __future__ import annotations

import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llava_mini.serving import classroom
from llava_mini.serving.openai_api import MAX_IMAGE_BYTES, Engine, RequestError, parse_chat_request

MAX_BODY_BYTES = 16 * 2 ** 20


class ClientGone(Exception):
    """The client closed the connection while its answer was streaming."""


class Handler(BaseHTTPRequestHandler):
    server: "ChatServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):      # the default would log the request line; keep it to what we choose
        pass

    def _log(self, status: int):
        if not self.server.quiet:
            print(f"{self.command} {self.path.split('?')[0]} {status}", file=sys.stderr)

    def _send_json(self, status: int, payload: dict):
        self._send(status, "application/json", json.dumps(payload).encode())

    def _error(self, status: int, message: str):
        kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 500: "server_error"}.get(
            status, "invalid_request_error")
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._error(401, "missing or wrong API key (send Authorization: Bearer <key>)")
        return False

    def _send(self, status: int, content_type: str, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._log(status)

    def do_GET(self):
        path = self.path.split("?")[0]
        public = path in ("/", "/index.html") or path.startswith("/static/")
        if not public and not self._authorized():
            return
        engine, images = self.server.engine, self.server.image_dir
        found = None
        if path.rstrip("/") == "/v1/models":
            found = 200, "application/json", json.dumps({"object": "list", "data": [engine.model_card()]}).encode()
        elif path in ("/", "/index.html"):
            found = classroom.static_file("index.html")
        elif path.startswith("/static/"):
            found = classroom.static_file(path[len("/static/"):])
        elif path == "/classroom/images":
            found = 200, "application/json", json.dumps({"images": classroom.gallery(images)}).encode()
        elif path.startswith("/classroom/images/"):
            found = classroom.gallery_image(images, path[len("/classroom/images/"):])
        elif path == "/classroom/blank.png":
            found = 200, "image/png", classroom.blank_png(engine)
        if found is None:
            self._error(404, f"no such path: {path} (GET /v1/models, POST /v1/chat/completions, GET / for the page)")
        else:
            self._send(*found)

    def _read_json(self):
        """The request's JSON body, or None after answering with the error."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a request needs a Content-Length")
            return None
        if length > self.server.max_body:
            self.close_connection = True                 # the body is not read: the connection cannot be reused
            self._error(413, f"the request body is {length} bytes, more than the {self.server.max_body} "
                             "this server takes")
            return None
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._error(400, f"the request body is not JSON: {e}")
            return None

    def do_POST(self):
        if not self._authorized():
            return
        path = self.path.split("?")[0].rstrip("/")
        if path == "/classroom/attention":
            body = self._read_json()
            if body is not None:
                try:
                    with self.server.lock:
                        self._send(200, "application/json", classroom.attention_heatmap(self.server.engine, body))
                except RequestError as e:
                    self._error(e.status, str(e))
                except ValueError as e:                    # e.g. an answer with no tokens to show
                    self._error(400, str(e))
            return
        if path != "/v1/chat/completions":
            self._error(404, f"no such path: {self.path.split('?')[0]} (POST /v1/chat/completions)")
            return
        body = self._read_json()
        if body is None:
            return
        engine = self.server.engine
        try:
            request = parse_chat_request(body, self.server.max_image_bytes)
            if request.model not in (None, engine.name):
                raise RequestError(f"unknown model {request.model!r}; this server serves {engine.name!r}",
                                   status=404)
            with self.server.lock:                        # one model: one answer at a time
                if request.stream:
                    self._stream(request)
                else:
                    self._send_json(200, engine.complete(request))
        except RequestError as e:
            self._error(e.status, str(e))
        except ClientGone:
            self.close_connection = True
            self._log(499)
        except Exception as e:                            # a bug: say so in JSON, and keep serving
            self._error(500, f"internal error ({type(e).__name__}: {e}); please report it")

    def _stream(self, request):
        """Server-sent events: a role chunk, a chunk per new piece of text, a finish chunk, [DONE]."""
        started, name = int(time.time()), self.server.engine.name
        stream_id = f"chatcmpl-{started}-{threading.get_ident()}"
        headers_sent = []

        def event(delta: dict, finish=None):
            if not headers_sent:                          # after the checks in complete(): errors stay plain JSON
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                headers_sent.append(True)
                event({"role": "assistant"})
            chunk = {"id": stream_id, "object": "chat.completion.chunk", "created": started, "model": name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            try:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                raise ClientGone() from None

        self.close_connection = True
        response = self.server.engine.complete(request, on_text=lambda text: event({"content": text}))
        event({}, response["choices"][0]["finish_reason"])
        try:
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise ClientGone() from None
        self._log(200)


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    # Connections the kernel holds while the accept loop is busy (socketserver's default is 5): a class of 32 who
    # press Enter together on a loaded machine would otherwise see some connections refused or reset.
    request_queue_size = 128

    def __init__(self, address, engine: Engine, api_key: str | None, max_body: int, max_image_bytes: int,
                 quiet: bool, image_dir: str | None):
        super().__init__(address, Handler)
        self.engine, self.api_key, self.max_body, self.max_image_bytes = engine, api_key, max_body, max_image_bytes
        self.quiet, self.image_dir = quiet, image_dir
        self.lock = threading.Lock()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_body: int = MAX_BODY_BYTES, max_image_bytes: int | None = None, quiet: bool = False,
                image_dir: str | None = None) -> ChatServer:
    """A server bound to host:port (port 0: any free one; server.server_address says which); `image_dir`: the
    page's gallery (the world's held-out images)."""
    return ChatServer((host, port), engine, api_key, max_body, max_image_bytes or MAX_IMAGE_BYTES, quiet, image_dir)
