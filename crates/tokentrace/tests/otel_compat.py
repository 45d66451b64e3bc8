"""The seed's "Custom Telemetry Context" example with the official OpenTelemetry Python SDK: an
application span with user_id and operation_type around an openai chat completion through
tokentrace, traceparent injected, the application's spans exported to tokentrace's OTLP receiver
(OTEL_EXPORTER_OTLP_ENDPOINT). Then get_span_tree shows the whole flow.

Usage: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT python3 otel_compat.py BASE_URL MODEL
"""

import sys
import time

from llama_stack_client import LlamaStackClient
from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

base, model = sys.argv[1], sys.argv[2]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


provider = TracerProvider(resource=Resource.create({"service.name": "my-ai-app"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("my-ai-app")
client = OpenAI(base_url=f"{base}/v1/openai/v1", api_key="not-needed")

# Add custom span attributes for better tracking
with tracer.start_as_current_span("custom_operation") as span:
    span.set_attribute("user_id", "user123")
    span.set_attribute("operation_type", "chat_completion")
    headers = {}
    inject(headers)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hello!"}], extra_headers=headers
    )
    ctx = span.get_span_context()
    app_trace = format(ctx.trace_id, "032x")
    app_span = format(ctx.span_id, "016x")
check(provider.force_flush(10_000), "the application's spans were exported")
check(raw.headers["x-trace-id"] == app_trace, "x-trace-id is the application's trace id")

stack = LlamaStackClient(base_url=base)
tree = {}
for _ in range(100):
    try:
        tree = stack.telemetry.get_span_tree(span_id=app_span)
    except Exception:
        tree = {}
    if len(tree) == 3:
        break
    time.sleep(0.1)
check(len(tree) == 3, f"three spans under the application's span: {[s.name for s in tree.values()]}")
root = tree[app_span]
check(root.name == "custom_operation" and root.parent_span_id is None, "the application span is the root")
check(root.attributes.get("user_id") == "user123", "user_id is kept")
check(root.attributes.get("operation_type") == "chat_completion", "operation_type is kept")
request = next(s for s in tree.values() if s.parent_span_id == app_span)
check(request.name == "POST /v1/openai/v1/chat/completions", f"the gateway's request span is its child: {request.name}")
call = next(s for s in tree.values() if s.parent_span_id == request.span_id)
check(call.name == f"chat {model}", f"the provider span is the grandchild: {call.name}")
check(all(s.trace_id == app_trace for s in tree.values()), "one trace")
t = stack.telemetry.get_trace(trace_id=app_trace)
check(t.root_span_id == app_span, "the trace's root is the application span")
print("all OpenTelemetry checks passed")
