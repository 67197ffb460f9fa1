"""A Python HTTP server that binds its own port, without SO_REUSEPORT:
$PORT plus its instance number ($NODE_APP_INSTANCE, which herd sets), so a
new instance cannot listen beside the old one. Each answer is the process
id, with the $VERSION it runs as a header. $FAIL_AT_START=1 makes it a new
version that cannot start."""
import http.server
import os
import signal
import sys

if os.environ.get("FAIL_AT_START") == "1":
    print("FAIL_AT_START=1: this version cannot start", file=sys.stderr)
    sys.exit(1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("x-pid", str(os.getpid()))
        self.send_header("x-version", os.environ.get("VERSION", ""))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port = int(os.environ["PORT"]) + int(os.environ.get("NODE_APP_INSTANCE", "0"))
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
print(f"python pid {os.getpid()} listening on {port}", flush=True)
server.serve_forever()
