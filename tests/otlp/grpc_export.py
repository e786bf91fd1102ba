"""OTLP over gRPC through the gateway: a grpcio TraceService receiver standing in for
Lightstep (plain HTTP/2 on 127.0.0.1:RECEIVER_PORT), and the OpenTelemetry SDK's gRPC exporter
sending to the gateway over TLS, once with a bearer token and once without.

Usage: python grpc_export.py RECEIVER_PORT GATEWAY_TARGET TOKEN CA_FILE

Prints JSON: {"with_token": result, "without_token": result, "received": [{metadata, services}]}.
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

received = []
lock = threading.Lock()


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        services = []
        for rs in request.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    services.append(kv.value.string_value)
        with lock:
            received.append(
                {
                    "metadata": [[k, v] for k, v in context.invocation_metadata()],
                    "services": services,
                    "spans": sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans),
                }
            )
        return trace_service_pb2.ExportTraceServiceResponse()


def spans():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("gatehouse.test").start_as_current_span("GET /cart"):
        pass
    provider.shutdown()
    return memory.get_finished_spans()


def export(target, ca, headers):
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    exporter = OTLPSpanExporter(endpoint=target, credentials=creds, headers=headers, timeout=10)
    result = exporter.export(spans())
    exporter.shutdown()
    return getattr(result, "name", str(result))


def main():
    port, target, token, ca = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        with_token = export(
            target, ca, (("authorization", f"Bearer {token}"), ("lightstep-access-token", "callers-own"))
        )
        without_token = export(target, ca, (("x-probe", "1"),))
    finally:
        server.stop(0)
    json.dump({"with_token": with_token, "without_token": without_token, "received": received}, sys.stdout)


if __name__ == "__main__":
    main()
