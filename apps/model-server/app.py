"""fabship sample model server: a FastAPI-like JSON API on the stdlib only.

Run: PORT=8080 venv/bin/python app.py   (HOST defaults to 0.0.0.0)
Never logs env values or request bodies: MODEL_API_KEY and inputs may be sensitive.
"""
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
# Working dir is the release dir; also look next to app.py (usually the same).
DIRS = list(dict.fromkeys([Path.cwd(), APP_DIR]))
MAX_BODY = 1 << 20


def switch_on(name: str) -> bool:
    return os.environ.get(name) == "1" or any((d / name).exists() for d in DIRS)


def read_version() -> str:
    # Precedence: APP_VERSION env > VERSION file.
    if os.environ.get("APP_VERSION"):
        return os.environ["APP_VERSION"].strip()
    for d in DIRS:
        try:
            v = (d / "VERSION").read_text().strip()
        except OSError:
            continue
        if v:
            return v
    return "unknown"


def load_model() -> dict:
    path = Path(os.environ.get("MODEL_WEIGHTS", APP_DIR / "weights.json"))
    w = json.loads(path.read_text())
    return {"name": str(w.get("name", "model")), "scale": float(w["scale"]), "bias": float(w["bias"])}


class Handler(BaseHTTPRequestHandler):
    server_version = "fabship-model-server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # default goes to stderr with odd format
        pass

    def _send(self, status: int, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        path = self.path.split("?", 1)[0]
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {path} {status}", flush=True)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/health":
            if switch_on("FAIL_HEALTH"):
                return self._send(503, {"status": "fail", "reason": "FAIL_HEALTH switch", "version": app["version"]})
            return self._send(200, {"status": "ok", "model": "loaded", "version": app["version"]})
        if path == "/version":
            return self._send(200, (app["version"] + "\n").encode(), "text/plain; charset=utf-8")
        if path == "/":
            return self._send(200, {"service": "model-server", "model": app["model"]["name"], "version": app["version"]})
        return self._send(404, {"detail": "Not Found"})

    do_HEAD = do_GET

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path != "/predict":
            return self._send(404 if path not in ("/health", "/version") else 405, {"detail": "Not Found"})
        key = os.environ.get("MODEL_API_KEY")
        if key and not hmac.compare_digest(self.headers.get("x-api-key", "").encode(), key.encode()):
            return self._send(401, {"detail": "invalid or missing x-api-key"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return self._send(413 if length > MAX_BODY else 400, {"detail": "bad Content-Length"})
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
            inputs = payload["inputs"]
            if not isinstance(inputs, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in inputs
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            # FastAPI answers validation errors with 422.
            return self._send(422, {"detail": 'expected JSON {"inputs": [numbers]}'})
        m = self.server.app["model"]
        return self._send(200, {"outputs": [x * m["scale"] + m["bias"] for x in inputs], "model": m["name"]})


def main() -> int:
    if switch_on("FAIL_START"):
        print("model-server: startup failed: FAIL_START switch is on (fabship test switch)", file=sys.stderr)
        return 1
    try:
        model = load_model()
    except (OSError, ValueError, KeyError) as e:
        print(f"model-server: cannot load model weights: {e.__class__.__name__}", file=sys.stderr)
        return 1
    host = os.environ.get("HOST") or "0.0.0.0"
    try:
        port = int(os.environ.get("PORT") or 8080)
        server = ThreadingHTTPServer((host, port), Handler)
    except (ValueError, OSError) as e:
        print(f"model-server: cannot listen on {host}:{os.environ.get('PORT') or 8080}: {e}", file=sys.stderr)
        return 1
    server.daemon_threads = True
    server.app = {"version": read_version(), "model": model}

    def on_term(signum, _frame):
        print(f"{signal.Signals(signum).name} received, shutting down", flush=True)
        # shutdown() blocks until serve_forever returns, so call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"model-server {server.app['version']} listening on {host}:{port} pid {os.getpid()}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
