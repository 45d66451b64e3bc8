"""Unmodified official SDKs against a running tokentrace: the seed's "Basic Telemetry Setup"
example with llama-stack-client, a streaming call with the openai SDK, and the telemetry API
seeing both with the ids and token counts the calls returned.

Usage: python3 sdk_compat.py BASE_URL MODEL
"""

import json
import sys
import time
import urllib.request

from llama_stack_client import LlamaStackClient
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


# The seed's example (default_headers= is the constructor's spelling of extra_headers).
client = LlamaStackClient(
    base_url=base,
    default_headers={"X-Telemetry-Service": "my-ai-app", "X-Telemetry-Version": "1.0.0"},
)
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": "Hello!"}]
)
trace_id = raw.headers["x-trace-id"]
response = raw.parse()
check(response.choices[0].message.content == "Hello!", "llama-stack-client chat completion answered")
usage = response.usage
usage = usage if isinstance(usage, dict) else usage.model_dump()  # a dict in llama-stack-client 0.2.12
check(usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, f"usage reported: {usage}")

# Streaming through the openai SDK.
oa = OpenAI(base_url=f"{base}/v1/openai/v1", api_key="not-needed")
with oa.chat.completions.with_streaming_response.create(
    model=model, messages=[{"role": "user", "content": "Tell me a story"}], stream=True
) as r:
    stream_trace = r.headers["x-trace-id"]
    chunks = list(r.parse())
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == "Tell me a story", "openai streaming completion answered")
check(all(getattr(c, "usage", None) is None for c in chunks), "no usage chunk the client did not ask for")
check(stream_trace != trace_id, "each call has its own trace")

# The telemetry API sees both calls (the sqlite sink commits within a fraction of a second).
def find_trace(tid):
    for _ in range(100):
        for t in client.telemetry.query_traces(limit=1000):
            if t.trace_id == tid:
                return t
        time.sleep(0.1)
    return None


trace = find_trace(trace_id)
check(trace is not None, f"query_traces finds x-trace-id {trace_id}")
tree = client.telemetry.get_span_tree(span_id=trace.root_span_id)
spans = list(tree.values())
check(len(spans) == 2, f"span tree has the request and provider spans: {[s.name for s in spans]}")
root = next(s for s in spans if s.span_id == trace.root_span_id)
call = next(s for s in spans if s.span_id != trace.root_span_id)
check(root.name == "POST /v1/openai/v1/chat/completions", f"request span named after the route: {root.name}")
check(root.attributes.get("http.request.header.x-telemetry-service") == "my-ai-app", "X-Telemetry-Service recorded")
check(call.parent_span_id == root.span_id and call.status == "ok", "provider span is a child, status ok")
check(call.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"], "input tokens equal the response usage")
check(call.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"], "output tokens equal the response usage")

stream_tree_trace = find_trace(stream_trace)
check(stream_tree_trace is not None, "the streaming call's trace is stored")
stream_spans = client.telemetry.get_span_tree(span_id=stream_tree_trace.root_span_id)
stream_call = next(s for s in stream_spans.values() if s.parent_span_id is not None)
stream_total = stream_call.attributes["gen_ai.usage.input_tokens"] + stream_call.attributes["gen_ai.usage.output_tokens"]

# query_metrics: 0.2.12 has no client method, so the route is called directly.
now = int(time.time())
body = json.dumps({
    "start_time": now - 600, "end_time": now + 5, "query_type": "instant",
    "label_matchers": [{"name": "model_id", "value": model, "operator": "="}],
}).encode()
req = urllib.request.Request(f"{base}/v1/telemetry/metrics/total_tokens", data=body,
                             headers={"content-type": "application/json"})
series = json.load(urllib.request.urlopen(req))["data"]
check(len(series) == 1, f"one series for the model: {series}")
labels = {l["name"]: l["value"] for l in series[0]["labels"]}
check(labels == {"model_id": model, "provider_id": "echo"}, f"labels model_id and provider_id: {labels}")
value = series[0]["values"][0]["value"]
first_total = usage["total_tokens"]
check(value == first_total + stream_total, f"total_tokens {value} = {first_total} + {stream_total}")

# The native Llama Stack inference API through the same client.
native = client.inference.chat_completion(model_id=model, messages=[{"role": "user", "content": "native"}])
check(native.completion_message.content == "native", "native chat_completion answered")
check({m.metric for m in native.metrics} == {"prompt_tokens", "completion_tokens", "total_tokens"}, "native metrics")
models = client.models.list()
check(any(m.identifier == model for m in models), "models.list shows the model")
print("all SDK checks passed")
