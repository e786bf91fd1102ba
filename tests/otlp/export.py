"""Sends real OTLP/HTTP export requests, made by the OpenTelemetry Python SDK and its
exporters, to the recording server that tests/otlp_classify.rs starts.

Usage: python export.py http://127.0.0.1:PORT

One TracerProvider (MeterProvider, LoggerProvider) has one resource, so each resource gets
its own provider with an in-memory exporter or reader; what they collected is then handed
to one real OTLP exporter in a single export() call, which makes one request with several
resources, as a Collector batching for many services would. Each request carries an
`x-otlp-case` header naming its case. JSON comes from the SDK's own OTLP/JSON exporter
(opentelemetry-exporter-otlp-json-http), not from a conversion.

Prints on stdout a JSON list of cases: {case, path, encoding, gzip, expected, error}, where
`expected` is the service names the request carries (each once, in order of first
appearance, "" for a resource without service.name) and `error` the OtlpError variant the
Rust reader must give instead. Exits non-zero if any export fails.
"""

import json
import sys

from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter as JsonLogExporter
from opentelemetry.exporter.otlp.json.http import OTLPMetricExporter as JsonMetricExporter
from opentelemetry.exporter.otlp.json.http import OTLPSpanExporter as JsonSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as ProtoCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as ProtoLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as ProtoMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as ProtoSpanExporter,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def named(name, version):
    # Resource.create adds the SDK's telemetry.sdk.* attributes, as applications get.
    return Resource.create({"service.name": name, "service.version": version, "host.name": "ci-7"})


# (resource, the service name it carries or "" for none)
CHECKOUT = (named("checkout", "3f2a9c1"), "checkout")
BILLING = (named("billing", "77be0d4"), "billing")
# Resource() itself adds nothing, so this one really has no service.name.
UNNAMED = (Resource({"host.name": "ci-7", "deployment.environment.name": "test"}), "")
CHECKOUT_AGAIN = (named("checkout", "9d0e111"), "checkout")
CART = (named("warenkorb-ü", "1"), "warenkorb-ü")
NOT_A_STRING = (Resource({"service.name": 42}), None)

MANY = [CHECKOUT, BILLING, UNNAMED, CHECKOUT_AGAIN, CART]


def distinct(resources):
    out = []
    for _, name in resources:
        if name not in out:
            out.append(name)
    return out


def spans_for(resources):
    spans = []
    for resource, _ in resources:
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("gatehouse.test", "0.1")
        with tracer.start_as_current_span("GET /orders", attributes={"http.method": "GET"}):
            with tracer.start_as_current_span(
                "SELECT orders",
                # A span attribute named service.name is not a resource's.
                attributes={"db.system": "postgresql", "service.name": "spoofed-in-span"},
            ) as span:
                span.add_event("rows", {"count": 3})
        provider.shutdown()
        spans.extend(memory.get_finished_spans())
    return spans


def metrics_for(resources):
    resource_metrics = []
    for resource, _ in resources:
        reader = InMemoryMetricReader()
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = provider.get_meter("gatehouse.test", "0.1")
        meter.create_counter("requests").add(3, {"route": "/orders"})
        meter.create_histogram("latency", unit="ms").record(12.5, {"route": "/orders"})
        resource_metrics.extend(reader.get_metrics_data().resource_metrics)
        provider.shutdown()
    return MetricsData(resource_metrics=resource_metrics)


def logs_for(resources):
    records = []
    for resource, _ in resources:
        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logger = provider.get_logger("gatehouse.test", "0.1")
        logger.emit(body="order placed", severity_text="INFO", attributes={"order.id": 7})
        logger.emit(body={"nested": ["a", 1]}, severity_text="WARN")
        provider.force_flush()
        records.extend(memory.get_finished_logs())
        provider.shutdown()
    return records


PROTO = {
    "traces": ProtoSpanExporter,
    "metrics": ProtoMetricExporter,
    "logs": ProtoLogExporter,
}
JSON = {
    "traces": JsonSpanExporter,
    "metrics": JsonMetricExporter,
    "logs": JsonLogExporter,
}
DATA = {"traces": spans_for, "metrics": metrics_for, "logs": logs_for}


def main():
    base = sys.argv[1].rstrip("/")
    cases = []
    failed = []

    def case(name, signal, encoding, gzip, resources, path=None):
        path = path or f"/v1/{signal}"
        classes = PROTO if encoding == "protobuf" else JSON
        if encoding == "protobuf":
            compression = ProtoCompression.Gzip if gzip else ProtoCompression.NoCompression
        else:
            compression = JsonCompression.GZIP if gzip else JsonCompression.NONE
        exporter = classes[signal](
            endpoint=base + path,
            headers={"x-otlp-case": name},
            timeout=10,
            compression=compression,
        )
        result = exporter.export(DATA[signal](resources))
        exporter.shutdown()
        if getattr(result, "name", str(result)) != "SUCCESS":
            failed.append(f"{name}: {result}")
        bad = any(n is None for _, n in resources)
        cases.append(
            {
                "case": name,
                "path": path,
                "encoding": encoding,
                "gzip": gzip,
                "expected": None if bad else distinct(resources),
                "error": "ServiceNameNotString" if bad else None,
            }
        )

    for encoding in ["protobuf", "json"]:
        for gzip in [False, True]:
            suffix = f"{encoding}{'-gzip' if gzip else ''}"
            case(f"traces-many-{suffix}", "traces", encoding, gzip, MANY)
            case(f"metrics-many-{suffix}", "metrics", encoding, gzip, MANY)
            case(f"logs-many-{suffix}", "logs", encoding, gzip, MANY)
        case(f"traces-one-{encoding}", "traces", encoding, False, [BILLING])
        case(f"traces-not-a-string-{encoding}", "traces", encoding, False, [CHECKOUT, NOT_A_STRING])
        case(f"metrics-not-a-string-{encoding}", "metrics", encoding, False, [NOT_A_STRING])
    # Lightstep's own paths.
    case("traces-lightstep-path", "traces", "protobuf", True, [CHECKOUT, BILLING], "/traces/otlp/v0.9")
    case("metrics-lightstep-path", "metrics", "protobuf", False, [BILLING], "/metrics/otlp/v0.9")

    json.dump(cases, sys.stdout)
    if failed:
        print("\nexports failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
