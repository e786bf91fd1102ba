"""Stands in for Lightstep's OTLP/HTTP ingest in the demo (./demo/run.sh): accepts trace
exports (protobuf, plain or gzip) on any path, answers 200 with an empty
ExportTraceServiceResponse, and prints what it got: the path, the `lightstep-access-token`
and `authorization` headers, and each resource's attributes with its spans' names.

Usage: python lightstep_receiver.py ADDR_FILE
Listens on 127.0.0.1 (a port the system picks), writes `http=127.0.0.1:PORT` to ADDR_FILE
once listening, and prints to stdout (flushed per export). Needs opentelemetry-proto
(tests/otlp/requirements.txt).
"""

import gzip
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return f"<{kind}>"
    return str(getattr(v, kind))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        lines = [f"export to {self.path}"]
        lines.append(f"  lightstep-access-token: {self.headers.get('lightstep-access-token', '(none)')}")
        lines.append(f"  authorization: {self.headers.get('authorization', '(none)')}")
        try:
            export = ExportTraceServiceRequest.FromString(body)
        except Exception as e:  # a body that is not a trace export
            lines.append(f"  not a trace export: {e}")
            self.answer(400, b"", lines)
            return
        for rs in export.resource_spans:
            spans = [s.name for ss in rs.scope_spans for s in ss.spans]
            lines.append(f"  resource with {len(spans)} span(s): {', '.join(spans)}")
            for kv in sorted(rs.resource.attributes, key=lambda kv: kv.key):
                lines.append(f"    {kv.key} = {value(kv.value)}")
        self.answer(200, ExportTraceServiceResponse().SerializeToString(), lines)

    def answer(self, status, body, lines):
        print("\n".join(lines), flush=True)
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    addr_file = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(addr_file + ".tmp", "w") as f:
        f.write(f"http=127.0.0.1:{server.server_address[1]}\n")
    os.rename(addr_file + ".tmp", addr_file)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
