"""Sends real OTLP/HTTP exports (traces, metrics, logs), made by the OpenTelemetry Python SDK and its exporters,
twice: through the gateway (with a bearer token, over TLS) and straight to the recording
upstream (marked `x-direct: 1`), so tests/attribution.rs can compare what the gateway
forwarded with what the SDK sent.

Usage: python attribute.py GATEWAY_BASE TOKEN CA_FILE DIRECT_BASE CHECKOUT_VERSION

Resources: checkout runs CHECKOUT_VERSION (a commit the gateway knows, as a short SHA);
search runs "2.4.1" (not a SHA); cart has no version (the gateway maps it to a branch);
ledger runs "deadbee" (a SHA nobody pushed). Each request carries `x-otlp-case`.
Prints the cases sent as JSON on stdout; exits non-zero if any export fails.
"""

import json
import os
import sys

from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
from opentelemetry.exporter.otlp.json.http import OTLPMetricExporter as JsonMetricExporter
from opentelemetry.exporter.otlp.json.http import OTLPSpanExporter as JsonSpanExporter
from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter as JsonLogExporter
from opentelemetry.exporter.otlp.proto.http import Compression as ProtoCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as ProtoLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as ProtoMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as ProtoSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# The metrics and logs of several resources, as tests/otlp/export.py builds them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import logs_for, metrics_for  # noqa: E402

PROTO = {"traces": ProtoSpanExporter, "metrics": ProtoMetricExporter, "logs": ProtoLogExporter}
JSON = {"traces": JsonSpanExporter, "metrics": JsonMetricExporter, "logs": JsonLogExporter}


def spans_for(resources):
    spans = []
    for resource in resources:
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("gatehouse.test", "0.1")
        with tracer.start_as_current_span("POST /checkout", attributes={"http.request.method": "POST"}):
            with tracer.start_as_current_span("charge card") as span:
                span.add_event("retry", {"attempt": 2})
        provider.shutdown()
        spans.extend(memory.get_finished_spans())
    return spans


def main():
    gateway, token, ca, direct, version = sys.argv[1:6]
    checkout = Resource.create({"service.name": "checkout", "service.version": version})
    search = Resource.create({"service.name": "search", "service.version": "2.4.1"})
    cart = Resource.create({"service.name": "cart"})
    ledger = Resource.create({"service.name": "ledger", "service.version": "deadbee"})
    cases = []
    failed = []
    data = {
        "traces": spans_for,
        "metrics": lambda rs: metrics_for([(r, "") for r in rs]),
        "logs": lambda rs: logs_for([(r, "") for r in rs]),
    }
    plan = [("traces", "mixed"), ("traces", "unknown"), ("metrics", "mixed"), ("logs", "mixed")]
    for signal, kind in plan:
        resources = [checkout, search, cart, ledger] if kind == "mixed" else [search, ledger]
        for encoding in ["protobuf", "json"]:
            for gzip in [False, True]:
                name = f"{signal}-{kind}-{encoding}{'-gzip' if gzip else ''}"
                payload = data[signal](resources)
                for base, headers, cert in [
                    (gateway, {"authorization": f"Bearer {token}", "x-otlp-case": name}, ca),
                    (direct, {"x-direct": "1", "x-otlp-case": name}, None),
                ]:
                    if encoding == "protobuf":
                        compression = ProtoCompression.Gzip if gzip else ProtoCompression.NoCompression
                        classes = PROTO
                    else:
                        compression = JsonCompression.GZIP if gzip else JsonCompression.NONE
                        classes = JSON
                    exporter = classes[signal](
                        endpoint=f"{base}/v1/{signal}",
                        certificate_file=cert,
                        headers=headers,
                        timeout=10,
                        compression=compression,
                    )
                    result = exporter.export(payload)
                    exporter.shutdown()
                    if getattr(result, "name", str(result)) != "SUCCESS":
                        failed.append(f"{name} via {base}: {result}")
                cases.append({"case": name, "signal": signal, "encoding": encoding, "gzip": gzip, "kind": kind})
    json.dump(cases, sys.stdout)
    if failed:
        print("\nexports failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
