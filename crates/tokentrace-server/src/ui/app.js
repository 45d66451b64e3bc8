// The web UI: renders the page the path names from tokentrace's JSON routes. Every element is
// built with the DOM (text through textContent), never from HTML strings: stored text cannot
// become markup. State lives in the URL, so a view can be shared and reloaded.
import * as lib from "./lib.js";

const main = document.getElementById("main");
const SVG = "http://www.w3.org/2000/svg";

/** An element with attributes (`on…` become listeners) and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** An SVG element. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

/** Calls a JSON route; an answer that is not 2xx throws an Error with the route's message. */
async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (r.status === 401 && !path.startsWith("/ui/")) {
    showLogin(json?.detail || "This tokentrace needs an API key.");
    throw new Error("an API key is needed");
  }
  if (!r.ok) {
    const detail = json?.detail || json?.error?.message || text || r.statusText;
    throw new Error(`${method} ${path} answered ${r.status}: ${detail}`);
  }
  return json;
}

/** Asks for a key once; the server keeps it in an HttpOnly cookie, then the page reloads. */
function showLogin(why) {
  if (document.getElementById("login")) return;
  const input = h("input", { type: "password", name: "key", autocomplete: "current-password", class: "wide", placeholder: "API key", required: true });
  const note = h("p", { class: "muted" }, why, " Enter a key with the telemetry.read scope (docs/SECURITY.md).");
  const form = h("form", { class: "filters", id: "login" }, h("label", {}, "API key", input), h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const old of main.querySelectorAll(".error")) old.remove();
    try {
      await api("POST", "/ui/login", { key: input.value });
      location.reload();
    } catch (err) {
      form.after(errorBox(err));
    }
  });
  main.replaceChildren(h("h1", {}, "Sign in"), note, form);
  input.focus();
}

function errorBox(err) {
  return h("div", { class: "error", role: "alert" }, String(err?.message || err));
}

function copyButton(text) {
  return h(
    "button",
    {
      class: "copy",
      type: "button",
      title: "Copy",
      onclick: async (e) => {
        e.stopPropagation();
        try {
          await navigator.clipboard.writeText(text);
          e.target.textContent = "copied";
        } catch {
          e.target.textContent = "select and copy";
        }
      },
    },
    "copy",
  );
}

function statusCell(status) {
  return h("span", { class: `status-${status}` }, status);
}

function rangeSelect(name, value, withAll) {
  const names = withAll ? [...lib.RANGE_NAMES, "all"] : lib.RANGE_NAMES;
  return h("select", { name }, names.map((r) => h("option", { value: r, selected: r === value }, r === "all" ? "all time" : `last ${r}`)));
}

function setPage(title) {
  document.title = `${title} · tokentrace`;
  const page = location.pathname === "/" ? "traces" : location.pathname.split("/")[1];
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (page === "trace" && a.dataset.page === "traces"));
  }
  main.replaceChildren();
}

// ---------------------------------------------------------------- traces

function tracesRequest(q) {
  const filters = lib.parseFilters(q.get("where") || "");
  if (q.get("name")) filters.push({ key: "name", op: "eq", value: q.get("name") });
  return {
    since: q.get("since") || lib.rangeSince(q.get("range") || "24h", new Date()),
    until: q.get("until") || null,
    service: q.get("service") || null,
    model: q.get("model") || null,
    errors_only: q.get("errors") === "1",
    filters,
    limit: 50,
    cursor: q.get("cursor") || null,
  };
}

function tracesPage() {
  setPage("Traces");
  const q = new URLSearchParams(location.search);
  const input = (name, label, cls) =>
    h("label", {}, label, h("input", { type: "text", name, value: q.get(name) || "", class: cls, placeholder: label.toLowerCase() }));
  const form = h(
    "form",
    { class: "filters", id: "filters" },
    h("label", {}, "Time", rangeSelect("range", q.get("range") || "24h", true)),
    input("since", "From (ISO)"),
    input("until", "Until (ISO)"),
    input("service", "Service"),
    input("model", "Model"),
    input("name", "Span name"),
    input("where", "Attributes (key=value; …)", "wide"),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "errors", value: "1", checked: q.get("errors") === "1" }), "errors only"),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "refresh", value: "1", checked: q.get("refresh") === "1" }), "auto-refresh"),
    h("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, String(v));
    location.search = next.toString();
  });
  form.querySelector("[name=refresh]").addEventListener("change", () => form.requestSubmit());
  const body = h("div", { id: "traces" });
  main.append(h("h1", {}, "Traces"), form, body);
  let selected = -1;
  let rows = [];
  const select = (i) => {
    rows.forEach((r, j) => r.classList.toggle("selected", j === i));
    selected = i;
    rows[i]?.scrollIntoView({ block: "nearest" });
  };
  const load = async () => {
    let req;
    try {
      req = tracesRequest(q);
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    let page;
    try {
      page = await api("POST", "/v1/tokentrace/traces", req);
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    const filtered = [...q.keys()].some((k) => !["range", "refresh"].includes(k));
    if (page.data.length === 0) {
      body.replaceChildren(
        filtered
          ? h("div", { class: "empty" }, "No traces match these filters. Widen the time range or clear a filter.")
          : h(
              "div",
              { class: "empty" },
              h("p", {}, "No traces yet — point your OpenAI client at ", h("code", {}, `${location.origin}/v1`), "."),
              h("p", { class: "muted" }, "For example: ", h("code", {}, `OpenAI(base_url="${location.origin}/v1/openai/v1", api_key="none")`), ", or send OpenTelemetry spans to ", h("code", {}, `${location.origin}/v1/traces`), "."),
            ),
      );
      return;
    }
    const table = h(
      "table",
      { class: "grid", id: "trace-table" },
      h("thead", {}, h("tr", {}, ["Start", "Root span", "Service", "Model", "Duration", "In", "Out", "Status", "User", "Session"].map((c, i) => h("th", { class: i >= 4 && i <= 6 ? "num" : null }, c)))),
      h(
        "tbody",
        {},
        page.data.map((t) =>
          h(
            "tr",
            { "data-trace": t.trace_id, onclick: () => (location.href = `/trace/${t.trace_id}`) },
            h("td", { title: t.start_time }, lib.fmtTime(t.start_time)),
            h("td", {}, h("a", { href: `/trace/${t.trace_id}` }, t.root_name || "(root not stored)")),
            h("td", {}, t.service_name || ""),
            h("td", {}, t.models.join(", ")),
            h("td", { class: "num" }, lib.fmtDuration(t.duration_ms)),
            h("td", { class: "num" }, lib.fmtCount(t.input_tokens)),
            h("td", { class: "num" }, lib.fmtCount(t.output_tokens)),
            h("td", {}, statusCell(t.status)),
            h("td", {}, t.user || ""),
            h("td", {}, t.session || ""),
          ),
        ),
      ),
    );
    rows = [...table.querySelectorAll("tbody tr")];
    const pager = h("div", { class: "pager" });
    if (q.get("cursor")) {
      const newest = new URLSearchParams(q);
      newest.delete("cursor");
      pager.append(h("a", { href: `/?${newest}` }, "← Newest"));
    }
    if (page.next) {
      const older = new URLSearchParams(q);
      older.set("cursor", page.next);
      pager.append(h("a", { href: `/?${older}`, id: "older" }, "Older →"));
    }
    pager.append(h("span", { class: "muted" }, `${page.data.length} traces · ↑/↓ to move, Enter to open`));
    body.replaceChildren(table, pager);
    if (selected >= 0) select(Math.min(selected, rows.length - 1));
  };
  document.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, select, textarea")) return;
    if (e.key === "ArrowDown") {
      e.preventDefault();
      select(Math.min(selected + 1, rows.length - 1));
    } else if (e.key === "ArrowUp") {
      e.preventDefault();
      select(Math.max(selected - 1, 0));
    } else if (e.key === "Enter" && selected >= 0) {
      location.href = `/trace/${rows[selected].dataset.trace}`;
    } else if (e.key === "Escape") {
      select(-1);
    }
  });
  load();
  if (q.get("refresh") === "1" && !q.get("cursor")) setInterval(load, 5000);
}

// ---------------------------------------------------------------- one trace

const GENAI_PARAMS = [
  ["gen_ai.request.temperature", "temperature"],
  ["gen_ai.request.top_p", "top_p"],
  ["gen_ai.request.max_tokens", "max_tokens"],
  ["gen_ai.request.stream", "stream"],
  ["gen_ai.response.finish_reasons", "finish reasons"],
];

function valueText(v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function spanDetail(span) {
  const a = span.attributes || {};
  const dur = span.end_time ? lib.fmtDuration(lib.spanMs(span.start_time, span.end_time)) : "not ended";
  const out = [
    h("h2", {}, span.name),
    kv([
      ["status", h("span", { class: `status-${span.status || "open"}` }, span.status || (span.end_time ? "unset" : "open"), span.status_message ? `: ${span.status_message}` : "")],
      ["kind", span.kind],
      ["service", span.service_name],
      ["duration", dur],
      ["start", span.start_time],
      ["end", span.end_time],
      ["span id", h("span", {}, h("code", {}, span.span_id), copyButton(span.span_id))],
      ["trace id", h("span", {}, h("code", {}, span.trace_id), copyButton(span.trace_id))],
      ["parent", span.parent_span_id ? h("code", {}, span.parent_span_id) : null],
    ]),
  ];
  const model = a["gen_ai.response.model"] ?? a["gen_ai.request.model"] ?? a["model_id"];
  if (model !== undefined || a["gen_ai.operation.name"] !== undefined) {
    const ttft = a["gen_ai.response.time_to_first_chunk"];
    out.push(
      h("h2", {}, "Model call"),
      kv([
        ["model", model],
        ["requested", a["gen_ai.request.model"]],
        ["provider", a["gen_ai.provider.name"] ?? a["provider_id"]],
        ["tokens in", lib.fmtCount(a["gen_ai.usage.input_tokens"])],
        ["tokens out", lib.fmtCount(a["gen_ai.usage.output_tokens"])],
        ["cached tokens", lib.fmtCount(a["gen_ai.usage.cache_read.input_tokens"])],
        ["reasoning tokens", lib.fmtCount(a["gen_ai.usage.reasoning.output_tokens"])],
        ["cost", typeof a["tokentrace.cost.usd"] === "number" ? lib.fmtCost(a["tokentrace.cost.usd"]) : null],
        ["user", a["user.id"]],
        ["session", a["session.id"]],
        ["described by", a["tokentrace.genai.origin"]],
        ["counted by", a["tokentrace.genai.counted_by"] ? `the gateway's span ${a["tokentrace.genai.counted_by"]}` : null],
        ["time to first token", typeof ttft === "number" ? lib.fmtDuration(ttft * 1000) : null],
        ...GENAI_PARAMS.map(([k, label]) => [label, a[k] === undefined ? null : valueText(a[k])]),
      ]),
    );
  }
  const chat = lib.conversation(a);
  if (chat.length) {
    out.push(
      h("h2", {}, "Conversation"),
      h(
        "div",
        { class: "chat", id: "chat" },
        chat.map((m) =>
          h("div", { class: `msg ${m.role}` }, h("span", { class: "role" }, m.role), m.text, m.toolCalls.map((c) => h("div", { class: "tool-call" }, `→ ${c.name}(${c.arguments})`))),
        ),
      ),
    );
  }
  if (span.events?.length) {
    out.push(
      h("h2", {}, `Events (${span.events.length})`),
      h(
        "table",
        { class: "grid" },
        h(
          "tbody",
          {},
          span.events.map((e) =>
            h(
              "tr",
              {},
              h("td", { title: e.timestamp }, lib.fmtTime(e.timestamp)),
              h("td", { class: e.kind === "log" ? `sev-${e.severity}` : null }, e.kind === "log" ? e.severity : e.kind),
              h("td", {}, e.kind === "log" ? e.message : e.kind === "metric" ? `${e.name} = ${e.value} ${e.unit || ""}` : e.name),
              h("td", { class: "muted" }, Object.keys(e.attributes || {}).length ? JSON.stringify(e.attributes) : ""),
            ),
          ),
        ),
      ),
    );
  }
  if (span.links?.length) {
    out.push(h("h2", {}, "Links"), h("ul", {}, span.links.map((l) => h("li", {}, h("a", { href: `/trace/${l.trace_id}` }, `${l.trace_id} / ${l.span_id}`)))));
  }
  const keys = Object.keys(a).sort();
  out.push(
    h("h2", {}, `Attributes (${keys.length})`),
    h("dl", { class: "kv", id: "attributes" }, keys.map((k) => [h("dt", {}, k), h("dd", { class: "mono" }, valueText(a[k]))])),
  );
  return out;
}

async function tracePage(id) {
  setPage(`Trace ${id.slice(0, 8)}`);
  let detail;
  try {
    detail = await api("GET", `/v1/tokentrace/traces/${encodeURIComponent(id)}`);
  } catch (err) {
    main.append(h("h1", {}, "Trace"), errorBox(err), h("p", {}, h("a", { href: "/" }, "← all traces")));
    return;
  }
  const { trace, spans } = detail;
  const rows = lib.layoutWaterfall(spans);
  const errors = spans.filter((x) => x.status === "error").length;
  const total = lib.spanMs(trace.start_time, trace.end_time);
  const openJson = async () => {
    try {
      const tree = await api("POST", `/v1/telemetry/spans/${trace.root_span_id}/tree`, {});
      const url = URL.createObjectURL(new Blob([JSON.stringify(tree, null, 2)], { type: "application/json" }));
      window.open(url, "_blank");
    } catch (err) {
      main.prepend(errorBox(err));
    }
  };
  main.append(
    h("p", {}, h("a", { href: "/" }, "← all traces")),
    h(
      "div",
      { class: "trace-head" },
      h("h1", {}, "Trace ", h("code", {}, trace.trace_id), copyButton(trace.trace_id)),
      h("span", { class: "muted" }, lib.fmtTime(trace.start_time)),
      h("span", {}, total === null ? "open" : lib.fmtDuration(total)),
      h("span", {}, `${spans.length} spans`),
      errors ? h("span", { class: "status-error" }, `${errors} failed`) : null,
      h("button", { type: "button", id: "open-json", onclick: openJson }, "Open as JSON"),
    ),
  );
  const collapsed = new Set();
  const list = h("div", { class: "waterfall", id: "waterfall", tabindex: "0" });
  const panel = h("aside", { class: "panel", id: "detail" });
  main.append(h("div", { class: "split" }, list, panel));
  let shown = [];
  let selected = rows.length ? rows[0].span.span_id : null;
  const render = () => {
    shown = lib.visibleRows(rows, collapsed);
    const frag = document.createDocumentFragment();
    for (const r of shown) {
      const sp = r.span;
      const toggle = r.hasChildren ? (collapsed.has(sp.span_id) ? "▸" : "▾") : "";
      const row = h(
        "div",
        {
          class: `wf-row${sp.status === "error" ? " error" : ""}${sp.span_id === selected ? " selected" : ""}`,
          "data-span": sp.span_id,
          "data-depth": r.depth,
          onclick: (e) => {
            if (e.target.classList.contains("wf-toggle") && r.hasChildren) {
              if (collapsed.has(sp.span_id)) collapsed.delete(sp.span_id);
              else collapsed.add(sp.span_id);
            }
            selected = sp.span_id;
            render();
          },
        },
        h("div", { class: "wf-name", style: null, title: sp.name }, h("span", { class: "wf-indent" }, "\u00a0\u00a0".repeat(r.depth)), h("span", { class: "wf-toggle" }, toggle), sp.status === "error" ? "⚠ " : "", sp.name),
        h("div", { class: "wf-dur" }, r.durationMs === null ? "open" : lib.fmtDuration(r.durationMs)),
        h("div", { class: "wf-track" }, h("div", { class: "wf-bar", "data-offset": r.offsetPct.toFixed(2), "data-width": r.widthPct.toFixed(2) })),
      );
      const bar = row.querySelector(".wf-bar");
      bar.style.left = `${r.offsetPct}%`;
      bar.style.width = `${r.widthPct}%`;
      frag.append(row);
    }
    list.replaceChildren(frag);
    const span = spans.find((x) => x.span_id === selected);
    panel.replaceChildren(...(span ? spanDetail(span) : [h("p", { class: "muted" }, "Select a span.")]));
  };
  render();
  document.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, select, textarea")) return;
    const i = shown.findIndex((r) => r.span.span_id === selected);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const j = Math.max(0, Math.min(shown.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)));
      selected = shown[j]?.span.span_id ?? selected;
      render();
      list.querySelector(".selected")?.scrollIntoView({ block: "nearest" });
    } else if (e.key === "Enter" && i >= 0 && shown[i].hasChildren) {
      if (collapsed.has(selected)) collapsed.delete(selected);
      else collapsed.add(selected);
      render();
    } else if (e.key === "Escape") {
      location.href = "/";
    }
  });
}

// ---------------------------------------------------------------- sessions

async function sessionsPage() {
  setPage("Sessions");
  const q = new URLSearchParams(location.search);
  const range = q.get("range") || "7d";
  const user = q.get("user") || "";
  const form = h(
    "form",
    { class: "filters" },
    h("label", {}, "Time", rangeSelect("range", range, false)),
    h("label", {}, "User", h("input", { name: "user", value: user, placeholder: "user.id", size: 16 })),
    h("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams(new FormData(form));
    if (!params.get("user")) params.delete("user");
    location.search = params.toString();
  });
  const body = h("div", { id: "sessions" });
  main.append(h("h1", {}, "Sessions"), form, body);
  let answer;
  try {
    answer = await api("POST", "/v1/tokentrace/sessions", { since: lib.rangeSince(range, new Date()), user: user || null, limit: 200 });
  } catch (err) {
    body.append(errorBox(err));
    return;
  }
  const usage = answer;
  const sessions = answer.data.map((s) => ({ ...s, key: s.session_id }));
  if (!sessions.length) {
    body.append(h("div", { class: "empty" }, "No sessions in this range. Calls are grouped by their ", h("code", {}, "session.id"), " (or ", h("code", {}, "session_id"), ", ", h("code", {}, "gen_ai.conversation.id"), ") attribute; the gateway reads it from baggage, ", h("code", {}, "X-Session-Id"), " or the request's metadata."));
    return;
  }
  if (answer.more) body.append(h("p", { class: "muted" }, `${answer.more} older sessions not shown: narrow the range.`));
  for (const u of sessions) {
    const turns = h("div", { class: "turns" }, h("p", { class: "muted" }, "Loading…"));
    const d = h(
      "details",
      { class: "session", "data-session": u.key },
      h(
        "summary",
        {},
        h("strong", {}, u.key),
        h("span", {}, `${u.traces} turns`),
        h("span", {}, `${lib.fmtCount(u.input_tokens)} in · ${lib.fmtCount(u.output_tokens)} out`),
        h("span", { class: "cost", title: "cost in USD by the price table; ? marks calls of models without a price" }, lib.fmtCost(u.cost_usd, u.unpriced_calls)),
        h("span", { class: "users" }, (u.users || []).join(", ")),
        h("span", { class: "muted" }, `${lib.fmtTime(u.first)} → ${lib.fmtTime(u.last)}`),
        h("span", {}, lib.fmtDuration(Date.parse(u.last) - Date.parse(u.first))),
      ),
      turns,
    );
    d.addEventListener("toggle", async () => {
      if (!d.open || d.dataset.loaded) return;
      d.dataset.loaded = "1";
      try {
        const page = await api("POST", "/v1/tokentrace/traces", {
          since: usage.since,
          filters: [{ key: "session.id", op: "eq", value: u.key }],
          limit: 200,
        });
        const list = [...page.data].reverse();
        turns.replaceChildren(
          h(
            "table",
            { class: "grid" },
            h("thead", {}, h("tr", {}, ["#", "Start", "Root span", "Model", "Duration", "In", "Out", "Status"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              list.map((t, i) =>
                h(
                  "tr",
                  { onclick: () => (location.href = `/trace/${t.trace_id}`) },
                  h("td", {}, i + 1),
                  h("td", {}, lib.fmtTime(t.start_time)),
                  h("td", {}, h("a", { href: `/trace/${t.trace_id}` }, t.root_name || "")),
                  h("td", {}, t.models.join(", ")),
                  h("td", { class: "num" }, lib.fmtDuration(t.duration_ms)),
                  h("td", { class: "num" }, lib.fmtCount(t.input_tokens)),
                  h("td", { class: "num" }, lib.fmtCount(t.output_tokens)),
                  h("td", {}, statusCell(t.status)),
                ),
              ),
            ),
          ),
        );
      } catch (err) {
        turns.replaceChildren(errorBox(err));
      }
    });
    body.append(d);
  }
}

// ---------------------------------------------------------------- charts

/** Stacked bars of series over buckets: [{name, cls, values}], with a tooltip per bar. */
function stackedBars(id, series, labels) {
  const n = labels.length;
  const W = 900;
  const H = 220;
  const pad = 36;
  const totals = labels.map((_, i) => series.reduce((sum, x) => sum + x.values[i], 0));
  const max = Math.max(1, ...totals);
  const bw = (W - pad - 8) / Math.max(n, 1);
  const svg = s("svg", { class: "chart", id, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-total": series.reduce((a, x) => a + x.values.reduce((p, v) => p + v, 0), 0) });
  svg.append(s("line", { class: "axis", x1: pad, y1: H - 20, x2: W, y2: H - 20 }), s("text", { x: 2, y: 14 }, lib.fmtCount(Math.round(max))), s("text", { x: 2, y: H - 22 }, "0"));
  for (let i = 0; i < n; i++) {
    let y = H - 20;
    for (const x of series) {
      const v = x.values[i];
      if (!v) continue;
      const bh = (v / max) * (H - 40);
      y -= bh;
      svg.append(s("rect", { class: x.cls, x: pad + i * bw + 1, y, width: Math.max(bw - 2, 1), height: bh }, s("title", {}, `${labels[i]} · ${x.name}: ${lib.fmtCount(v)}`)));
    }
  }
  const every = Math.ceil(n / 6);
  for (let i = 0; i < n; i += every) svg.append(s("text", { x: pad + i * bw, y: H - 6 }, labels[i].slice(5, 16)));
  return svg;
}

/** Horizontal bars, one per row: `value(row)` as the bar, `text(row)` beside it and on hover. */
function barChart(id, title, rows, value, text) {
  const W = 440;
  const rowH = 22;
  const labelW = 140;
  const H = rows.length * rowH + 28;
  const max = Math.max(1e-9, ...rows.map(value));
  const svg = s("svg", { class: "chart bars", id, viewBox: `0 0 ${W} ${H}`, "data-rows": rows.length });
  svg.append(s("text", { x: 6, y: 16 }, title));
  rows.forEach((r, i) => {
    const y = 26 + i * rowH;
    const w = ((W - labelW - 70) * value(r)) / max;
    svg.append(
      s("text", { x: 6, y: y + 13 }, (r.key ?? "(none)").slice(0, 20)),
      s("rect", { class: "in", x: labelW, y: y + 2, width: Math.max(w, 1), height: rowH - 8 }, s("title", {}, `${r.key ?? "(none)"}: ${text(r)}`)),
      s("text", { x: labelW + w + 6, y: y + 13 }, text(r)),
    );
  });
  svg.style.height = `${H}px`;
  return svg;
}

async function metricSeries(name, since, until, granularity, matchers) {
  const d = await api("POST", `/v1/telemetry/metrics/${encodeURIComponent(name)}`, {
    start_time: Math.floor(since / 1000),
    end_time: Math.floor(until / 1000),
    granularity,
    query_type: "range",
    label_matchers: matchers,
  });
  return d.data;
}

function bucketAxis(sinceMs, untilMs, granularity) {
  const step = lib.granularitySecs(granularity);
  const start = Math.floor(sinceMs / 1000 / step) * step;
  const n = Math.max(1, Math.ceil((untilMs / 1000 - start) / step));
  const labels = Array.from({ length: n }, (_, i) => lib.fmtTime(new Date((start + i * step) * 1000).toISOString()));
  return { start, step, n, labels };
}

// ---------------------------------------------------------------- dashboard

async function dashboardPage() {
  setPage("Dashboard");
  const q = new URLSearchParams(location.search);
  const range = q.get("range") || "24h";
  const form = h("form", { class: "filters" }, h("label", {}, "Time", rangeSelect("range", range, false)), h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.search = new URLSearchParams(new FormData(form)).toString();
  });
  const body = h("div", { id: "dashboard" });
  main.append(h("h1", {}, "Dashboard"), form, body);
  const untilMs = Date.now();
  const since = lib.rangeSince(range, new Date(untilMs));
  const sinceMs = Date.parse(since);
  let byModel, byProvider;
  try {
    [byModel, byProvider] = await Promise.all([
      api("POST", "/v1/tokentrace/usage", { since, by: "model_id" }),
      api("POST", "/v1/tokentrace/usage", { since, by: "provider_id" }),
    ]);
  } catch (err) {
    body.append(errorBox(err));
    return;
  }
  const rows = byModel.data;
  const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
  const calls = sum("calls");
  if (!calls) {
    body.append(h("div", { class: "empty" }, `No model calls in the last ${range}. Calls through the gateway (`, h("code", {}, `${location.origin}/v1`), ") and spans with gen_ai.usage.* attributes show here."));
    return;
  }
  const card = (k, v, id) => h("div", { class: "card", id }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));
  body.append(
    h(
      "div",
      { class: "cards" },
      card("calls", lib.fmtCount(calls), "card-calls"),
      card("input tokens", lib.fmtCount(sum("input_tokens")), "card-input"),
      card("output tokens", lib.fmtCount(sum("output_tokens")), "card-output"),
      card("cost", lib.fmtCost(rows.some((r) => r.cost_usd !== null) ? sum("cost_usd") : null, sum("unpriced_calls")), "card-cost"),
      card("error rate", `${((sum("errors") / calls) * 100).toFixed(1)} %`, "card-errors"),
    ),
  );
  const usageTable = (id, title, data) =>
    h(
      "table",
      { class: "grid", id },
      h("thead", {}, h("tr", {}, [title, "Calls", "Errors", "In", "Out", "Cost", "p50", "p95", "p99", "TTFT p50"].map((c, i) => h("th", { class: i ? "num" : null }, c)))),
      h(
        "tbody",
        {},
        data.map((r) =>
          h(
            "tr",
            {},
            h("td", {}, r.key ?? "(none)"),
            h("td", { class: "num" }, lib.fmtCount(r.calls)),
            h("td", { class: "num" }, r.errors ? `${r.errors} (${((r.errors / r.calls) * 100).toFixed(1)} %)` : "0"),
            h("td", { class: "num" }, lib.fmtCount(r.input_tokens)),
            h("td", { class: "num" }, lib.fmtCount(r.output_tokens)),
            h("td", { class: "num" }, lib.fmtCost(r.cost_usd, r.unpriced_calls)),
            h("td", { class: "num" }, lib.fmtDuration(r.p50_duration_ms)),
            h("td", { class: "num" }, lib.fmtDuration(r.p95_duration_ms)),
            h("td", { class: "num" }, lib.fmtDuration(r.p99_duration_ms)),
            h("td", { class: "num" }, lib.fmtDuration(r.p50_time_to_first_token_ms)),
          ),
        ),
      ),
    );
  body.append(
    h("h2", {}, "Per model"),
    h(
      "div",
      { class: "chart-row" },
      barChart("model-calls", "requests", rows, (r) => r.calls, (r) => lib.fmtCount(r.calls)),
      barChart("model-p95", "latency p95", rows, (r) => r.p95_duration_ms || 0, (r) => lib.fmtDuration(r.p95_duration_ms)),
      barChart("model-errors", "error rate", rows, (r) => r.errors / r.calls, (r) => `${((r.errors / r.calls) * 100).toFixed(1)} %`),
    ),
    usageTable("per-model", "Model", rows),
    h("h2", {}, "Per provider"),
    usageTable("per-provider", "Provider", byProvider.data),
  );
  const granularity = lib.granularityFor((untilMs - sinceMs) / 1000);
  const axis = bucketAxis(sinceMs, untilMs, granularity);
  try {
    const [prompt, completion] = await Promise.all([
      metricSeries("prompt_tokens", sinceMs, untilMs, granularity, []),
      metricSeries("completion_tokens", sinceMs, untilMs, granularity, []),
    ]);
    const values = (series) => lib.buckets(series.flatMap((x) => x.values), axis.start, axis.step, axis.n);
    body.append(
      h("h2", {}, `Tokens over time (per ${granularity})`),
      h("div", { class: "legend" }, h("span", { style: null, class: "l-in" }, "input"), h("span", { class: "l-out" }, "output")),
      stackedBars("tokens-chart", [
        { name: "input", cls: "in", values: values(prompt) },
        { name: "output", cls: "out", values: values(completion) },
      ], axis.labels),
    );
    for (const [cls, v] of [["l-in", "var(--bar)"], ["l-out", "var(--bar2)"]]) body.querySelector(`.${cls}`).style.setProperty("--c", v);
  } catch (err) {
    body.append(errorBox(err));
  }
}

// ---------------------------------------------------------------- metrics explorer

function parseMatchers(text) {
  const out = [];
  for (const raw of (text || "").split(/[;\n]/)) {
    const part = raw.trim();
    if (!part) continue;
    const m = /^([^=!~]+)(=~|!~|!=|=)(.*)$/.exec(part);
    if (!m) throw new Error(`label matcher "${part}": expected name=value, name!=value, name=~regex or name!~regex`);
    out.push({ name: m[1].trim(), operator: m[2], value: m[3] });
  }
  return out;
}

async function explorePage() {
  setPage("Metrics");
  const q = new URLSearchParams(location.search);
  const body = h("div", { id: "explore" });
  main.append(h("h1", {}, "Metrics"));
  let names;
  try {
    names = await api("GET", "/v1/tokentrace/metrics");
  } catch (err) {
    main.append(errorBox(err));
    return;
  }
  if (!names.length) {
    main.append(h("div", { class: "empty" }, "No metrics stored yet. Token metrics appear with the first model call; OTLP metrics with the first export to ", h("code", {}, `${location.origin}/v1/metrics`), "."));
    return;
  }
  const name = q.get("metric") || names[0].name;
  const range = q.get("range") || "24h";
  const form = h(
    "form",
    { class: "filters" },
    h("label", {}, "Metric", h("select", { name: "metric" }, names.map((m) => h("option", { value: m.name, selected: m.name === name }, `${m.name} (${m.unit || "no unit"}, ${m.series} series)`)))),
    h("label", {}, "Time", rangeSelect("range", range, false)),
    h("label", {}, "Granularity", h("select", { name: "granularity" }, ["auto", "1m", "5m", "15m", "1h", "6h", "1d"].map((g) => h("option", { value: g, selected: g === (q.get("granularity") || "auto") }, g)))),
    h("label", {}, "Labels (name=value; …)", h("input", { type: "text", class: "wide", name: "labels", value: q.get("labels") || "" })),
    h("button", { type: "submit" }, "Show"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.search = new URLSearchParams(new FormData(form)).toString();
  });
  main.append(form, body);
  const untilMs = Date.now();
  const sinceMs = Date.parse(lib.rangeSince(range, new Date(untilMs)));
  const g = q.get("granularity") && q.get("granularity") !== "auto" ? q.get("granularity") : lib.granularityFor((untilMs - sinceMs) / 1000);
  let series;
  try {
    series = await metricSeries(name, sinceMs, untilMs, g, parseMatchers(q.get("labels")));
  } catch (err) {
    body.append(errorBox(err));
    return;
  }
  const axis = bucketAxis(sinceMs, untilMs, g);
  const all = lib.buckets(series.flatMap((x) => x.values), axis.start, axis.step, axis.n);
  body.append(
    stackedBars("metric-chart", [{ name, cls: "in", values: all }], axis.labels),
    h(
      "table",
      { class: "grid", id: "series" },
      h("thead", {}, h("tr", {}, h("th", {}, "Series"), h("th", { class: "num" }, "Total"), h("th", {}, "Unit"))),
      h(
        "tbody",
        {},
        series.map((x) =>
          h(
            "tr",
            {},
            h("td", {}, x.labels.map((l) => `${l.name}=${l.value}`).join(" ") || "(no labels)"),
            h("td", { class: "num" }, lib.fmtCount(x.values.reduce((a, p) => a + p.value, 0))),
            h("td", {}, x.values[0]?.unit || ""),
          ),
        ),
      ),
    ),
  );
  if (!series.length) body.append(h("div", { class: "empty" }, "No points in this window."));
}

// ---------------------------------------------------------------- routing

const path = location.pathname;
if (path === "/") tracesPage();
else if (path.startsWith("/trace/")) tracePage(decodeURIComponent(path.slice("/trace/".length)));
else if (path === "/sessions") sessionsPage();
else if (path === "/dashboard") dashboardPage();
else if (path === "/explore") explorePage();
else main.replaceChildren(errorBox(`no page at ${path}`));
