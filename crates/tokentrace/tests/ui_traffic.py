"""Calls a running tokentrace's gateway with the official openai SDK, as an application would;
prints the trace id of the first call, then `done`. Used by tests/ui.rs."""
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=f"{base}/v1/openai/v1", api_key="none")
first = None
for i in range(3):
    raw = client.chat.completions.with_raw_response.create(
        model="echo",
        messages=[
            {"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": f"What is a span? ({i})"},
        ],
    )
    raw.parse()
    first = first or raw.headers["x-trace-id"]
stream = client.chat.completions.create(
    model="echo", stream=True, messages=[{"role": "user", "content": "stream it"}]
)
for _ in stream:
    pass
print(f"chat_trace={first}")
print("done")
