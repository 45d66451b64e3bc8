"""LLM spans from real instrumentation packages, understood and counted once.

The official `openai` SDK, instrumented with one of opentelemetry-instrumentation-openai-v2
(`otel_genai`), OpenLLMetry's opentelemetry-instrumentation-openai (`openllmetry`) or
openinference-instrumentation-openai (`openinference`), exports its spans to tokentrace's OTLP
receiver. It calls a fake OpenAI (which reports cached and reasoning tokens) twice directly,
where tokentrace only receives the spans, and twice through tokentrace's gateway, where the
gateway also records the call. `plain` calls the gateway without instrumentation: users and
sessions from baggage, headers and metadata, a priced override, an unknown model.

Every number checked is computed here from the fake's usage and the price table, then read back
from the store (read-only SQL), `/metrics`, `query_metrics`, usage and sessions.

Usage: python genai_compat.py INSTRUMENTATION TOKENTRACE_URL OTLP_URL UPSTREAM_PORT
"""

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INST, BASE, OTLP, UPSTREAM_PORT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
USER, SESSION = f"u-{INST}", f"s-{INST}"

# Content capture on, each instrumentation its own way (before they are imported).
if INST == "otel_genai":
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "span_only"
elif INST == "openllmetry":
    os.environ["TRACELOOP_TRACE_CONTENT"] = "true"

USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
ANSWERED_BY = "gpt-4o-mini-2024-07-18"
# The embedded price of gpt-4o-mini (and its dated snapshot), USD per million tokens.
PRICE_IN, PRICE_OUT, PRICE_CACHED = 0.15, 0.6, 0.075


def cost(prompt, completion, cached):
    return ((prompt - cached) * PRICE_IN + cached * PRICE_CACHED + completion * PRICE_OUT) / 1e6


def check(cond, what):
    if not cond:
        print(f"FAILED [{INST}]: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok [{INST}]: {what}")


def close(a, b):
    return a is not None and b is not None and abs(a - b) < 1e-12


# ------------------------------------------------------------------------ the fake provider
class FakeOpenAI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(n) or b"{}")
        rid = f"chatcmpl-{INST}-{time.time_ns()}"
        model = ANSWERED_BY if body.get("model") == "gpt-4o-mini" else body.get("model")
        base = {"id": rid, "created": int(time.time()), "model": model}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def send(obj):
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

            chunk = {**base, "object": "chat.completion.chunk"}
            send({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for piece in ["Hel", "lo!"]:
                send({**chunk, "choices": [{"index": 0, "delta": {"content": piece}}]})
            send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                send({**chunk, "choices": [], "usage": USAGE})
            self.wfile.write(b"data: [DONE]\n\n")
            return
        data = json.dumps({
            **base, "object": "chat.completion", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello!"}}],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


fake = ThreadingHTTPServer(("127.0.0.1", UPSTREAM_PORT), FakeOpenAI)
threading.Thread(target=fake.serve_forever, daemon=True).start()


# ------------------------------------------------------------------------ reading tokentrace
def post(path, body):
    req = urllib.request.Request(f"{BASE}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def sql(query):
    return post("/v1/tokentrace/sql", {"sql": query})["rows"]


def prometheus(name):
    with urllib.request.urlopen(f"{BASE}/metrics", timeout=30) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def query_metrics(name):
    now = int(time.time())
    ans = post(f"/v1/telemetry/metrics/{name}",
               {"start_time": now - 3600, "end_time": now + 60, "query_type": "instant"})
    return sum(v["value"] for s in ans["data"] for v in s["values"])


def stored(name):
    return sql(f"SELECT coalesce(sum(value), 0) FROM metrics WHERE name = '{name}'")[0][0]


def totals():
    return {m: prometheus(p) for m, p in [
        ("prompt_tokens", "llama_stack_prompt_tokens_total"),
        ("completion_tokens", "llama_stack_completion_tokens_total"),
        ("cached_tokens", "tokentrace_cached_tokens_total"),
        ("cost_usd", "tokentrace_cost_usd_total"),
        ("unpriced", "tokentrace_unpriced_calls_total"),
    ]}


def attrs_of(row):
    return json.loads(row[0])


def wait_for(query, count, what):
    rows = []
    for _ in range(200):
        rows = sql(query)
        if len(rows) >= count:
            break
        time.sleep(0.1)
    check(len(rows) == count, f"{what}: {len(rows)} of {count}")
    return rows


# ------------------------------------------------------------------------ the application
from openai import OpenAI  # noqa: E402

before = totals()
gateway = OpenAI(base_url=f"{BASE}/v1", api_key="sk-app-key-for-the-gateway", max_retries=0)
messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]

if INST == "plain":
    # Users and sessions: baggage first, then headers, then the request's user and metadata.
    gateway.chat.completions.create(
        model="gpt-4o-mini", messages=messages, user="ignored-user",
        extra_headers={"baggage": f"user.id={USER},session.id={SESSION}", "X-User-Id": "nope"})
    gateway.chat.completions.create(
        model="gpt-4o-mini", messages=messages, user=USER,
        extra_headers={"X-Session-Id": SESSION})
    gateway.chat.completions.create(
        model="gpt-4o-mini", messages=messages,
        extra_body={"metadata": {"user_id": USER, "session_id": SESSION}})
    # Priced by the run config (models[].pricing), and a model nobody priced.
    gateway.chat.completions.create(model="priced-alias", messages=messages, user=USER)
    gateway.chat.completions.create(model="my-finetune", messages=messages, user=USER)
    rows = wait_for(
        "SELECT attributes, name FROM spans WHERE json_extract(attributes, '$.\"user.id\"') = "
        f"'{USER}' AND json_extract(attributes, '$.\"tokentrace.genai.origin\"') = 'gateway'",
        5, "the gateway recorded the five calls for the user")
    by_model = {}
    for r in rows:
        a = attrs_of(r)
        by_model.setdefault(a["model_id"], []).append(a)
    for a in by_model["gpt-4o-mini"]:
        check(a.get("session.id") == SESSION, "the session came from baggage, header or metadata")
        check(a["gen_ai.usage.cache_read.input_tokens"] == 4, "cached tokens recorded")
        check(a["gen_ai.usage.reasoning.output_tokens"] == 2, "reasoning tokens recorded")
        check(close(a["tokentrace.cost.usd"], cost(12, 5, 4)), "priced by the embedded table")
    priced = by_model["priced-alias"][0]
    check(close(priced["tokentrace.cost.usd"], (8 * 1.0 + 4 * 0.5 + 5 * 2.0) / 1e6),
          "models[].pricing overrides the table, cached input at its own price")
    unknown = by_model["my-finetune"][0]
    check("tokentrace.cost.usd" not in unknown, "an unknown model gets no cost")
    after = totals()
    check(after["unpriced"] - before["unpriced"] == 1, "the unpriced call is counted")
    sessions = post("/v1/tokentrace/sessions", {"user": USER})["data"]
    check([s["session_id"] for s in sessions] == [SESSION], "sessions lists the user's session")
    s = sessions[0]
    check(s["calls"] == 3 and s["input_tokens"] == 36 and s["cached_input_tokens"] == 12,
          "the session's calls and tokens")
    check(close(s["cost_usd"], 3 * cost(12, 5, 4)), "the session's cost")
    check(USER in s["users"] and ANSWERED_BY in s["models"], "the session's user and answering model")
    usage = post("/v1/tokentrace/usage", {"by": "user.id"})["data"]
    mine = [u for u in usage if u["key"] == USER][0]
    check(mine["calls"] == 5 and mine["unpriced_calls"] == 1, "usage per user")
    for name in ["prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"]:
        p, q, st = after[name], query_metrics(name), stored(name)
        check(abs(p - q) < 1e-9 and abs(p - st) < 1e-9,
              f"/metrics, query_metrics and the store agree on {name}: {p} {q} {st}")
    fake.shutdown()
    print("all GenAI checks passed")
    sys.exit(0)

from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402

SERVICE = f"app-{INST}"
provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{OTLP}/v1/traces")))
trace.set_tracer_provider(provider)
if INST == "otel_genai":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
elif INST == "openllmetry":
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
else:
    from openinference.instrumentation.openai import OpenAIInstrumentor
OpenAIInstrumentor().instrument(tracer_provider=provider)
tracer = trace.get_tracer("app")

direct = OpenAI(base_url=f"http://127.0.0.1:{UPSTREAM_PORT}/v1", api_key="sk-direct", max_retries=0)
# The application's turn names its user and session; the gateway is told the session too.
with tracer.start_as_current_span("agent turn", attributes={"user.id": USER, "session.id": SESSION}):
    for client in (direct, gateway):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, user=USER,
                                       extra_headers={"X-Session-Id": SESSION})
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, user=USER, stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Session-Id": SESSION})
        for _ in stream:
            pass
check(provider.force_flush(10_000), "the application's spans were exported")

app_calls = wait_for(
    "SELECT attributes, name FROM spans WHERE service_name = "
    f"'{SERVICE}' AND json_extract(attributes, '$.\"tokentrace.genai.origin\"') = '{INST}'",
    4, "the four LLM spans were understood as the instrumentation's")
counted_by = [a for a in map(attrs_of, app_calls) if "tokentrace.genai.counted_by" in a]
own = [a for a in map(attrs_of, app_calls) if "tokentrace.genai.counted_by" not in a]
check(len(counted_by) == 2, "the two calls through the gateway are recognised as the gateway's")
for a in own:
    check(a["gen_ai.usage.input_tokens"] == 12 and a["gen_ai.usage.output_tokens"] == 5,
          "tokens under the canonical names")
    check(a["gen_ai.response.model"] == ANSWERED_BY, "the answering model")
    check(a["gen_ai.provider.name"] == "openai", "the provider")
    check("gen_ai.input.messages" in a and "Hi there" in a["gen_ai.input.messages"],
          "the input messages in the conventions' shape")
    cached = a.get("gen_ai.usage.cache_read.input_tokens", 0)
    check(close(a["tokentrace.cost.usd"], cost(12, 5, cached)), "the call's cost")
gateway_calls = wait_for(
    "SELECT attributes, name FROM spans WHERE json_extract(attributes, "
    f"'$.\"tokentrace.genai.origin\"') = 'gateway' AND json_extract(attributes, '$.\"user.id\"') "
    f"= '{USER}'", 2, "the gateway recorded its two calls")
for a in map(attrs_of, gateway_calls):
    check(a["session.id"] == SESSION, "the gateway's call has the session")
    check(close(a["tokentrace.cost.usd"], cost(12, 5, 4)), "the gateway priced cached tokens")

after = totals()
own_cached = sum(a.get("gen_ai.usage.cache_read.input_tokens", 0) for a in own)
check(after["prompt_tokens"] - before["prompt_tokens"] == 4 * 12,
      "every call counted exactly once in the prompt token counter")
check(after["completion_tokens"] - before["completion_tokens"] == 4 * 5,
      "... and in the completion token counter")
check(after["cached_tokens"] - before["cached_tokens"] == 2 * 4 + own_cached,
      "... and in the cached token counter")
expected_cost = 2 * cost(12, 5, 4) + sum(cost(12, 5, a.get("gen_ai.usage.cache_read.input_tokens", 0)) for a in own)
check(abs(after["cost_usd"] - before["cost_usd"] - expected_cost) < 1e-12, "... and in the cost")
for name in ["prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"]:
    p, q, st = after[name], query_metrics(name), stored(name)
    check(abs(p - q) < 1e-9 and abs(p - st) < 1e-9,
          f"/metrics, query_metrics and the store agree on {name}: {p} {q} {st}")
labels = sql("SELECT DISTINCT json_extract(labels, '$.origin') FROM metrics WHERE name = "
             "'prompt_tokens' AND json_extract(labels, '$.origin') IS NOT NULL")
check([INST] in labels, "the instrumentation's counts are labelled by origin")
sessions = post("/v1/tokentrace/sessions", {"user": USER})["data"]
check(len(sessions) == 1 and sessions[0]["session_id"] == SESSION, "the session is listed")
s = sessions[0]
check(s["calls"] == 4 and s["input_tokens"] == 48, "the session counts each call once")
check(close(s["cost_usd"], expected_cost), "the session's cost")
fake.shutdown()
print("all GenAI checks passed")
