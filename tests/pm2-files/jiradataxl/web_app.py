# A stand-in for the app: Python's http.server on PORT, answering every
# request with its pid, argv and environment as JSON.
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("", int(os.environ.get("PORT", "0"))), Handler)
print(f"listening on {server.server_address[1]} process {os.getpid()}", flush=True)
server.serve_forever()
