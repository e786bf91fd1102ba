"""The demo's "checkout" service (./demo/run.sh), built from a commit: it reports that commit
as its `service.version` (as Lightstep recommends for deployments) and sends a few traces with
the real OpenTelemetry Python SDK and its OTLP/HTTP protobuf exporter, authenticating with a
CI bearer token. It never holds a Lightstep token.

Usage: python checkout_service.py ENDPOINT TOKEN CA_FILE VERSION
  ENDPOINT  the traces URL, e.g. https://127.0.0.1:8443/v1/traces
Exits non-zero if the export is not accepted. Needs tests/otlp/requirements.txt.
"""

import sys

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def main():
    endpoint, token, ca_file, version = sys.argv[1:5]
    resource = Resource.create({
        "service.name": "checkout",
        "service.version": version,
        "deployment.environment.name": "demo",
    })
    # Spans are collected, then sent in one export call, so the result can be checked.
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("checkout", version)
    for order in (1, 2):
        with tracer.start_as_current_span("POST /checkout", attributes={"http.request.method": "POST", "order.id": order}):
            with tracer.start_as_current_span("price lookup"):
                pass
    provider.shutdown()
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        certificate_file=ca_file,
        headers={"authorization": f"Bearer {token}"},
        timeout=15,
    )
    spans = memory.get_finished_spans()
    result = exporter.export(spans)
    exporter.shutdown()
    print(f"checkout {version}: exported {len(spans)} spans to {endpoint}: {result.name}")
    sys.exit(0 if result == SpanExportResult.SUCCESS else 1)


if __name__ == "__main__":
    main()
