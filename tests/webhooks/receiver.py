"""A webhook receiver for the gateway's tests, verifying deliveries the way receivers do:
the Standard Webhooks signature with the `standardwebhooks` library, and X-Gogs-Signature with
hmac. Listens on 127.0.0.1 (port 0 unless given), writes its port to PORT_FILE, and appends
one JSON line per request to LOG_FILE.

Paths: /ok answers 200; /flaky answers 500 to the first two attempts of each webhook-id, then
200; /reject answers 400 until the file ACCEPT_FILE exists, then 200; /hang notes the attempt
in LOG_FILE.started at once, then answers nothing until ACCEPT_FILE exists (at most 120 s),
then 200.

usage: receiver.py PORT_FILE LOG_FILE SECRET ACCEPT_FILE [PORT]
"""

import base64
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import os
import threading
import time

from standardwebhooks.webhooks import Webhook

port_file, log_file, secret, accept_file = sys.argv[1:5]
port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
attempts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(secret).verify(body, headers)
            standard_ok = True
            standard_error = None
        except Exception as e:  # the library raises WebhookVerificationError
            standard_ok = False
            standard_error = str(e)
        key = secret.encode()
        gogs_ok = hmac.compare_digest(
            hmac.new(key, body, hashlib.sha256).hexdigest(),
            headers.get("x-gogs-signature", ""),
        )
        wid = headers.get("webhook-id", "")
        with lock:
            attempts[(self.path, wid)] = attempts.get((self.path, wid), 0) + 1
            n = attempts[(self.path, wid)]
        if self.path == "/flaky":
            status = 500 if n <= 2 else 200
        elif self.path == "/hang":
            # Announce the attempt in flight, then hang.
            with lock, open(log_file + ".started", "a") as f:
                f.write(json.dumps({"path": self.path, "webhook_id": wid}) + "\n")
            for _ in range(1200):
                if os.path.exists(accept_file):
                    break
                time.sleep(0.1)
            status = 200
        elif self.path == "/reject":
            status = 200 if os.path.exists(accept_file) else 400
        else:
            status = 200
        if not standard_ok:
            status = 401
        with lock, open(log_file, "a") as f:
            f.write(json.dumps({
                "path": self.path,
                "attempt": n,
                "status": status,
                "standard_ok": standard_ok,
                "standard_error": standard_error,
                "gogs_ok": gogs_ok,
                "headers": headers,
                "body": base64.b64encode(body).decode(),
            }) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
