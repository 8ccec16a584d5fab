"""A stand-in for TensorFlow Serving's REST API, for tests and machines without the binary.

It serves the same SavedModel version directories TF Serving would (``MODEL_DIR/<int>/``)
and answers the documented endpoints in TF Serving's JSON shapes:

* ``GET  /v1/models/{name}[/versions/{v}]``  model status:
  ``{"model_version_status": [{"version": "17", "state": "AVAILABLE", "status": {...}}]}``
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with the columnar format
  ``{"signature_name": "recommend", "inputs": {...}}`` -> ``{"outputs": {...}}`` (a bare value
  when the signature has a single output), errors as ``{"error": "..."}``.

Like TF Serving's default version policy it serves the latest version only, and picks up
newer version directories when :meth:`StandinServer.refresh` runs (every ``poll_s``).
Test hooks: ``fail_next`` (answer 503 that many times) and ``delay_s`` (sleep per predict).

Run: ``python -m tests.support.tfserving_standin --model-dir MODEL_DIR --port 8501``.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.serving.model_dir import list_versions

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$"
)


class StandinServer:
    """TF Serving REST look-alike over a model base directory, in a background thread."""

    def __init__(
        self,
        model_dir: Path,
        model_name: str = "interest",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_s: float = 1.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_name = model_name
        self.poll_s = poll_s
        self.fail_next = 0
        self.delay_s = 0.0
        self.requests = 0
        self._models: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self.refresh()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinServer:
        for target in (self._httpd.serve_forever, self._poll):
            t = threading.Thread(target=target, daemon=True, name="tfserving-standin")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refresh(self) -> None:
        """Serve the newest complete version (load it first, then swap)."""
        import tensorflow as tf

        versions = list_versions(self.model_dir)
        if not versions or versions[-1] in self._models:
            return
        v = versions[-1]
        model = tf.saved_model.load(str(self.model_dir / str(v)))
        with self._lock:
            self._models = {v: model}

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # a half-copied directory: try again next poll
                continue

    # -- request handling
    def status(self, version: int | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            versions = sorted(self._models)
        if version is not None:
            versions = [v for v in versions if v == version]
        if not versions:
            return 404, {"error": f"Could not find any versions of model {self.model_name}"}
        return 200, {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for v in versions
            ]
        }

    def predict(self, version: int | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import tensorflow as tf

        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"error": "stand-in: injected failure"}
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            if not self._models:
                return 404, {"error": f"Servable not found for request: Latest({self.model_name})"}
            v = version if version is not None else max(self._models)
            model = self._models.get(v)
        if model is None:
            return 404, {
                "error": f"Servable not found for request: Specific({self.model_name}, {v})"
            }
        name = body.get("signature_name", "serving_default")
        if name not in model.signatures:
            return 400, {"error": f'Serving signature name: "{name}" not found in signature def'}
        if "inputs" not in body:
            return 400, {"error": "stand-in supports the columnar 'inputs' format only"}
        fn = model.signatures[name]
        specs = fn.structured_input_signature[1]
        missing = sorted(set(specs) - set(body["inputs"]))
        if missing:
            return 400, {"error": f"Missing input(s): {', '.join(missing)}"}
        try:
            args = {
                k: tf.constant(np.asarray(body["inputs"][k], specs[k].dtype.as_numpy_dtype))
                for k in specs
            }
            result = {k: t.numpy() for k, t in fn(**args).items()}
        except Exception as exc:
            return 400, {"error": str(exc).splitlines()[0][:500]}
        outputs: Any = next(iter(result.values())) if len(result) == 1 else result
        return 200, {"outputs": outputs}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> tuple[re.Match[str] | None, int | None]:
                m = _PATH.match(self.path)
                if m is None or m["name"] != server.model_name:
                    return None, None
                return m, int(m["version"]) if m["version"] else None

            def do_GET(self) -> None:
                m, version = self._route()
                if m is None or m["verb"]:
                    self._send(404, {"error": f"Malformed request: GET {self.path}"})
                    return
                self._send(*server.status(version))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                server.requests += 1
                m, version = self._route()
                if m is None or not m["verb"]:
                    self._send(404, {"error": f"Malformed request: POST {self.path}"})
                    return
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    self._send(400, {"error": f"JSON Parse error: {exc}"})
                    return
                self._send(*server.predict(version, body))

        return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--model-name", default="interest")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8501)
    args = ap.parse_args(argv)
    server = StandinServer(args.model_dir, args.model_name, host=args.host, port=args.port).start()
    print(f"TF Serving stand-in on {server.url} serving {args.model_dir}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
