// Pure helpers of the web UI (no DOM, no network): formatting, the filters typed in the
// traces page, time ranges, the waterfall's layout, the GenAI conversation, chart buckets.
// app.js uses them; lib.test.mjs tests them with node's own test runner.

/** A duration in milliseconds, readable: 850 µs, 412.3 ms, 3.21 s, 2.5 min. */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

/** An ISO time as local `YYYY-MM-DD HH:MM:SS`. */
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A count with thousands separators; "" for null. */
export function fmtCount(n) {
  if (n === null || n === undefined) return "";
  return Number(n).toLocaleString("en-US");
}

/**
 * A cost in USD: cents from a cent up, else four significant digits; "—" when nothing was priced,
 * with "+?" when some calls had no price.
 */
export function fmtCost(usd, unpriced = 0) {
  if (usd === null || usd === undefined) return unpriced ? "?" : "—";
  const shown = usd >= 0.01 || usd === 0 ? `$${usd.toFixed(2)}` : `$${usd.toPrecision(4)}`;
  return unpriced ? `${shown}+?` : shown;
}

const OPS = [["!=", "ne"], [">", "gt"], ["<", "lt"], ["=", "eq"]];

/** A typed value: integers, floats, true/false, else the text. */
export function typedValue(v) {
  const t = v.trim();
  if (/^-?\d+$/.test(t)) return Number(t);
  if (/^-?\d*\.\d+$/.test(t)) return Number(t);
  if (t === "true") return true;
  if (t === "false") return false;
  return t;
}

/**
 * Attribute filters typed as `key=value; key>value …` (also `!=`, `<`), separated by `;` or new
 * lines → the query API's `{key, op, value}`. Throws an Error naming the part it cannot read.
 */
export function parseFilters(text) {
  const out = [];
  for (const raw of (text || "").split(/[;\n]/)) {
    const part = raw.trim();
    if (!part) continue;
    const found = OPS.map(([sym, op]) => [part.indexOf(sym), sym, op])
      .filter(([i]) => i > 0)
      .sort((a, b) => a[0] - b[0] || b[1].length - a[1].length)[0];
    if (!found) throw new Error(`filter "${part}": expected key=value, key!=value, key>value or key<value`);
    const [i, sym, op] = found;
    const key = part.slice(0, i).trim();
    const value = part.slice(i + sym.length);
    if (!key) throw new Error(`filter "${part}": the key is empty`);
    out.push({ key, op, value: typedValue(value) });
  }
  return out;
}

/** The filters back as text, for the form. */
export function filtersText(filters) {
  const sym = { eq: "=", ne: "!=", gt: ">", lt: "<" };
  return filters.map((f) => `${f.key}${sym[f.op]}${f.value}`).join("; ");
}

const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };

/** The preset ranges, in order. */
export const RANGE_NAMES = Object.keys(RANGES);

/** The start of a preset range before `now` (a Date), as ISO; null for "all". */
export function rangeSince(range, now) {
  const secs = RANGES[range];
  if (!secs) return null;
  return new Date(now.getTime() - secs * 1000).toISOString();
}

/** A bucket size of about 30 buckets over `secs`, as a granularity the metrics API takes. */
export function granularityFor(secs) {
  const steps = [[60, "1m"], [300, "5m"], [900, "15m"], [3600, "1h"], [21600, "6h"], [86400, "1d"]];
  for (const [s, g] of steps) if (secs / s <= 40) return g;
  return "1d";
}

/** Seconds of a granularity such as 5m. */
export function granularitySecs(g) {
  const m = /^(\d+)([smhdw])$/.exec(g);
  if (!m) return 3600;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2]];
}

/**
 * The waterfall of a trace: its spans in tree order (each parent before its children, children
 * by start time), each with its depth, whether it has children, and its bar as percentages of
 * the trace's time axis. A span whose parent is not among the spans is a root; a parent cycle
 * cannot loop (each span once; spans caught in a cycle come last, as roots).
 */
export function layoutWaterfall(spans) {
  // Nanoseconds after the earliest millisecond: small enough for a double to hold exactly.
  const baseMs = Math.min(...spans.map((s) => Date.parse(s.start_time)));
  const ns = (iso) => (Date.parse(iso) - baseMs) * 1e6 + nanosOf(iso);
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    const p = s.parent_span_id;
    if (p && p !== s.span_id && byId.has(p)) {
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(s);
    } else {
      roots.push(s);
    }
  }
  const start = (s) => ns(s.start_time);
  const order = (a, b) => start(a) - start(b);
  roots.sort(order);
  for (const list of children.values()) list.sort(order);
  const t0 = Math.min(...spans.map(start));
  const t1 = Math.max(...spans.map((s) => (s.end_time ? ns(s.end_time) : start(s))));
  const total = Math.max(t1 - t0, 1);
  const rows = [];
  const seen = new Set();
  const visit = (s, depth) => {
    const stack = [[s, depth]];
    while (stack.length) {
      const [span, d] = stack.pop();
      if (seen.has(span.span_id)) continue;
      seen.add(span.span_id);
      const kids = children.get(span.span_id) || [];
      const begin = start(span) - t0;
      const end = span.end_time ? ns(span.end_time) - t0 : begin;
      rows.push({
        span,
        depth: d,
        hasChildren: kids.length > 0,
        offsetPct: (begin / total) * 100,
        widthPct: Math.max(((end - begin) / total) * 100, 0),
        durationMs: span.end_time ? (end - begin) / 1e6 : null,
      });
      for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], d + 1]);
    }
  };
  for (const r of roots) visit(r, 0);
  for (const s of spans) if (!seen.has(s.span_id)) visit(s, 0);
  return rows;
}

/** Milliseconds from one ISO time to another, to the nanosecond; null without an end. */
export function spanMs(startIso, endIso) {
  if (!startIso || !endIso) return null;
  return Date.parse(endIso) - Date.parse(startIso) + (nanosOf(endIso) - nanosOf(startIso)) / 1e6;
}

/** The nanoseconds past the millisecond of an ISO time (Date keeps only milliseconds). */
function nanosOf(iso) {
  const m = /\.(\d+)/.exec(iso);
  if (!m) return 0;
  const digits = (m[1] + "000000000").slice(0, 9);
  return Number(digits.slice(3));
}

/** The rows of the waterfall still shown when the spans in `collapsed` hide their subtrees. */
export function visibleRows(rows, collapsed) {
  const out = [];
  let hideBelow = null;
  for (const r of rows) {
    if (hideBelow !== null && r.depth > hideBelow) continue;
    hideBelow = null;
    out.push(r);
    if (collapsed.has(r.span.span_id) && r.hasChildren) hideBelow = r.depth;
  }
  return out;
}

function textOf(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (typeof p === "string" ? p : p.text ?? p.content ?? `[${p.type || "part"}]`))
      .join("\n");
  }
  return JSON.stringify(content);
}

/**
 * The GenAI conversation of a span's attributes: the system instructions
 * (`gen_ai.system_instructions`), the messages of `gen_ai.input.messages` or `gen_ai.prompt`
 * (OpenAI messages, a prompt string, or an input), then the answer
 * (`gen_ai.output.messages` or `gen_ai.completion`), as [{role, text, toolCalls}].
 */
export function conversation(attrs) {
  const out = [];
  const parse = (v) => {
    if (typeof v !== "string") return v;
    try {
      return JSON.parse(v);
    } catch {
      return v;
    }
  };
  const messages = (v, defaultRole) => {
    const value = parse(v);
    if (Array.isArray(value)) {
      for (const m of value) {
        if (m && typeof m === "object" && ("role" in m || "content" in m || "parts" in m)) {
          // OpenAI messages carry `tool_calls`; the GenAI conventions' carry `parts` of type
          // `tool_call` beside the text ones, and answer a call with a `tool_call_response`.
          const parts = Array.isArray(m.parts) ? m.parts : [];
          const calls = [...(m.tool_calls || []), ...parts.filter((p) => p && p.type === "tool_call")];
          const toolCalls = calls.map((c) => ({
            name: c.function?.name ?? c.name ?? "?",
            arguments: c.function?.arguments ?? (typeof c.arguments === "string" ? c.arguments : JSON.stringify(c.arguments ?? {})),
          }));
          const said = parts
            .filter((p) => !(p && p.type === "tool_call"))
            .map((p) => (p && p.type === "tool_call_response" ? textOf(p.response) : p));
          const text = m.content !== undefined ? textOf(m.content) : textOf(said);
          out.push({ role: m.role || defaultRole, text, toolCalls });
        } else {
          out.push({ role: defaultRole, text: textOf(m), toolCalls: [] });
        }
      }
    } else if (value !== undefined && value !== null && value !== "") {
      out.push({ role: defaultRole, text: textOf(value), toolCalls: [] });
    }
  };
  messages(attrs["gen_ai.system_instructions"], "system");
  messages(attrs["gen_ai.input.messages"] ?? attrs["gen_ai.prompt"], "user");
  messages(attrs["gen_ai.output.messages"] ?? attrs["gen_ai.completion"], "assistant");
  return out;
}

/**
 * Points of several series on one time axis: `n` buckets of `step` seconds from `start` (unix
 * seconds), each the sum of the points that fall in it.
 */
export function buckets(points, start, step, n) {
  const out = new Array(n).fill(0);
  for (const p of points) {
    const i = Math.floor((p.timestamp - start) / step);
    if (i >= 0 && i < n) out[i] += p.value;
  }
  return out;
}
