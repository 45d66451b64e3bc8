"""The official SDKs with api_key= against a tokentrace with server.auth: the openai SDK for
inference, llama-stack-client for the telemetry API, the OpenTelemetry SDK exporting with
OTEL_EXPORTER_OTLP_HEADERS; without a key each is refused.

Usage: python3 auth_compat.py BASE_URL APP_KEY READ_KEY   (OTEL_* set by the caller)
"""

import sys
import time

import openai
from llama_stack_client import LlamaStackClient
from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

base, app_key, read_key = sys.argv[1:4]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


client = OpenAI(base_url=f"{base}/v1/openai/v1", api_key=app_key)
r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
check(r.choices[0].message.content == "hi", "openai SDK with api_key= is served")
try:
    OpenAI(base_url=f"{base}/v1/openai/v1", api_key="wrong-key").chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}]
    )
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and "not valid" in str(e), "a wrong key is refused with 401")

# The exporter reads Authorization from OTEL_EXPORTER_OTLP_HEADERS.
provider = TracerProvider(resource=Resource.create({"service.name": "auth-check"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
with provider.get_tracer("auth").start_as_current_span("exported with a key"):
    pass
provider.shutdown()

reader = LlamaStackClient(base_url=base, api_key=read_key)
found = []
for _ in range(100):
    found = [
        s
        for s in reader.telemetry.query_spans(attribute_filters=[], attributes_to_return=[])
        if s.name == "exported with a key"
    ]
    if found:
        break
    time.sleep(0.1)
check(len(found) == 1, "llama-stack-client with api_key= reads the span the OTel SDK exported")
try:
    LlamaStackClient(base_url=base, api_key=app_key).telemetry.query_traces()
    check(False, "the app key cannot read")
except Exception as e:  # the SDK's PermissionDeniedError
    check(getattr(e, "status_code", None) == 403 and "telemetry.read" in str(e), "the app key gets 403 naming telemetry.read")
print("done")
