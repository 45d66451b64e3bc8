// Unit tests of the UI's pure helpers: `node --test crates/tokentrace-server/src/ui/`.
import test from "node:test";
import assert from "node:assert/strict";
import * as lib from "./lib.js";

test("durations read well", () => {
  assert.equal(lib.fmtDuration(0.85), "850 µs");
  assert.equal(lib.fmtDuration(412.34), "412.3 ms");
  assert.equal(lib.fmtDuration(3210), "3.21 s");
  assert.equal(lib.fmtDuration(null), "");
});

test("filters parse with typed values and name what they cannot read", () => {
  assert.deepEqual(lib.parseFilters("user.id=alice; http.response.status_code>=400".replace(">=", ">")), [
    { key: "user.id", op: "eq", value: "alice" },
    { key: "http.response.status_code", op: "gt", value: 400 },
  ]);
  assert.deepEqual(lib.parseFilters("status!=ok\nx<1.5"), [
    { key: "status", op: "ne", value: "ok" },
    { key: "x", op: "lt", value: 1.5 },
  ]);
  assert.deepEqual(lib.parseFilters("a=b=c"), [{ key: "a", op: "eq", value: "b=c" }]);
  assert.throws(() => lib.parseFilters("nothing"), /expected key=value/);
  assert.equal(lib.filtersText(lib.parseFilters("a=1; b!=x")), "a=1; b!=x");
});

test("ranges and granularities", () => {
  const now = new Date("2026-12-01T12:00:00Z");
  assert.equal(lib.rangeSince("1h", now), "2026-12-01T11:00:00.000Z");
  assert.equal(lib.rangeSince("all", now), null);
  assert.equal(lib.granularityFor(3600), "5m");
  assert.equal(lib.granularityFor(86400), "1h");
  assert.equal(lib.granularitySecs("15m"), 900);
});

const span = (id, parent, startMs, endMs) => ({
  span_id: id,
  parent_span_id: parent,
  start_time: new Date(Date.UTC(2026, 0, 1, 0, 0, 0, startMs)).toISOString(),
  end_time: endMs === null ? null : new Date(Date.UTC(2026, 0, 1, 0, 0, 0, endMs)).toISOString(),
});

test("the waterfall puts parents first, children by start, bars on one axis", () => {
  const rows = lib.layoutWaterfall([
    span("c2", "root", 50, 100),
    span("c1", "root", 0, 50),
    span("g", "c1", 10, 20),
    span("root", null, 0, 100),
  ]);
  assert.deepEqual(rows.map((r) => [r.span.span_id, r.depth]), [["root", 0], ["c1", 1], ["g", 2], ["c2", 1]]);
  assert.equal(rows[0].widthPct, 100);
  assert.equal(rows[3].offsetPct, 50);
  assert.equal(rows[2].durationMs, 10);
  assert.ok(rows[0].hasChildren && !rows[2].hasChildren);
  const shown = lib.visibleRows(rows, new Set(["c1"]));
  assert.deepEqual(shown.map((r) => r.span.span_id), ["root", "c1", "c2"]);
});

test("a parent cycle and orphans still show every span once", () => {
  const rows = lib.layoutWaterfall([span("a", "b", 0, 1), span("b", "a", 0, 1), span("o", "missing", 0, null)]);
  assert.equal(rows.length, 3);
  assert.equal(new Set(rows.map((r) => r.span.span_id)).size, 3);
});

test("a thousand spans lay out", () => {
  const spans = [span("s0", null, 0, 1000)];
  for (let i = 1; i < 1000; i++) spans.push(span(`s${i}`, `s${Math.floor((i - 1) / 3)}`, i, i + 1));
  assert.equal(lib.layoutWaterfall(spans).length, 1000);
});

test("the conversation reads OpenAI messages, parts, tool calls and the completion", () => {
  const c = lib.conversation({
    "gen_ai.prompt": JSON.stringify([
      { role: "system", content: "be brief" },
      { role: "user", content: [{ type: "text", text: "hi" }, { type: "image_url" }] },
      { role: "assistant", content: null, tool_calls: [{ function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } }] },
    ]),
    "gen_ai.completion": "hello",
  });
  assert.deepEqual(c.map((m) => m.role), ["system", "user", "assistant", "assistant"]);
  assert.equal(c[1].text, "hi\n[image_url]");
  assert.deepEqual(c[2].toolCalls, [{ name: "weather", arguments: "{\"city\":\"Oslo\"}" }]);
  assert.equal(c[3].text, "hello");
  assert.deepEqual(lib.conversation({}), []);
});

test("buckets add up the points that fall in them", () => {
  const b = lib.buckets([{ timestamp: 0, value: 1 }, { timestamp: 59, value: 2 }, { timestamp: 60, value: 4 }, { timestamp: 999, value: 8 }], 0, 60, 3);
  assert.deepEqual(b, [3, 4, 0]);
});

test("span durations keep the nanoseconds", () => {
  assert.equal(lib.spanMs("2026-12-01T14:25:04.855115691Z", "2026-12-01T14:25:04.855453274Z").toFixed(6), "0.337583");
  assert.equal(lib.spanMs("2026-12-01T14:25:04Z", null), null);
});

test("costs show cents, small ones four digits, unpriced calls a question mark", () => {
  assert.equal(lib.fmtCost(12.345), "$12.35");
  assert.equal(lib.fmtCost(0), "$0.00");
  assert.equal(lib.fmtCost(0.0000045), "$0.000004500");
  assert.equal(lib.fmtCost(0.5, 2), "$0.50+?");
  assert.equal(lib.fmtCost(null, 3), "?");
  assert.equal(lib.fmtCost(null), "—");
});
