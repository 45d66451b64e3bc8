// Drives the web UI in headless Chromium (playwright-core) against a running tokentrace that
// tests/ui.rs filled through the gateway (the official openai SDK) and the OTLP receiver.
// Usage: node ui_e2e.mjs BASE_URL OUT_DIR EXPECT_JSON; prints "done" when every check passed.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const [base, outDir, expectJson] = process.argv.slice(2);
const expect = JSON.parse(expectJson);
const require = createRequire(`${process.env.TOKENTRACE_UI_NODE}/`);
const { chromium } = require("playwright-core");
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const problems = [];
const offsite = [];
async function newPage(colorScheme = "light") {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, colorScheme });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) offsite.push(r.url());
  });
  return page;
}
const shot = (page, name) => page.screenshot({ path: `${outDir}/${name}.png`, fullPage: true });
const rows = (page) => page.locator("#trace-table tbody tr");

const page = await newPage();

// Traces page: every trace, newest first; the OTLP trace with its service, model and error.
await page.goto(`${base}/`);
await page.waitForSelector("#trace-table tbody tr");
assert.equal(await rows(page).count(), expect.traces, "every trace is listed");
const agent = page.locator(`tr[data-trace="${expect.agent_trace}"]`);
assert.match(await agent.innerText(), /agent run[\s\S]*agent-svc[\s\S]*gpt-x[\s\S]*error/);
await shot(page, "traces");

// Filters narrow the list, and live in the URL.
await page.fill("input[name=model]", "gpt-x");
await page.click("button[type=submit]");
await page.waitForURL(/model=gpt-x/);
await page.waitForSelector("#trace-table tbody tr");
assert.equal(await rows(page).count(), 1);
await page.goto(`${base}/?errors=1`);
await page.waitForSelector("#trace-table tbody tr");
assert.equal(await rows(page).count(), 1, "errors only");
await page.goto(`${base}/?where=${encodeURIComponent("session.id=s-1")}`);
await page.waitForSelector("#trace-table tbody tr");
assert.equal(await rows(page).count(), 1, "an attribute filter");
await page.goto(`${base}/?model=nothing-like-this`);
await page.waitForSelector(".empty");
assert.match(await page.innerText(".empty"), /No traces match/);
await page.goto(`${base}/?where=${encodeURIComponent("no operator")}`);
await page.waitForSelector(".error");
assert.match(await page.innerText(".error"), /expected key=value/);
// Paging by cursor: one trace a page is not possible from the form, so ask the API's size.
await page.goto(`${base}/?name=${encodeURIComponent("chat echo")}`);
await page.waitForSelector(".empty, #trace-table");

// Keyboard: ↓ ↓ Enter opens the second trace.
await page.goto(`${base}/`);
await page.waitForSelector("#trace-table tbody tr");
const second = await rows(page).nth(1).getAttribute("data-trace");
await page.keyboard.press("ArrowDown");
await page.keyboard.press("ArrowDown");
await page.keyboard.press("Enter");
await page.waitForURL(`${base}/trace/${second}`);

// The OTLP trace: the waterfall nests agent run > plan > chat gpt-x; the failed call is marked;
// its panel shows the conversation, the status message and the tokens.
await page.goto(`${base}/trace/${expect.agent_trace}`);
await page.waitForSelector(".wf-row");
const depths = await page.$$eval(".wf-row", (els) => els.map((e) => [e.querySelector(".wf-name").textContent.trim(), Number(e.dataset.depth)]));
assert.deepEqual(depths.map(([n, d]) => [n.replace(/^[▾▸⚠ ]+/, ""), d]), [["agent run", 0], ["plan", 1], ["chat gpt-x", 2]]);
const failed = page.locator(".wf-row.error");
assert.equal(await failed.count(), 1);
await failed.click();
await page.waitForSelector("#chat .msg");
const chat = await page.$$eval("#chat .msg", (els) => els.map((e) => e.className.replace("msg ", "") + ": " + e.textContent));
assert.deepEqual(chat, ["system: systemplan the trip", "user: userwhere to?", "assistant: assistant→ search({\"q\":\"Oslo\"})"]);
assert.match(await page.innerText("#detail"), /rate limited/);
assert.match(await page.innerText("#detail"), /tokens in\s*120/);
// Collapsing hides the children; Esc goes back to the list.
await page.click(".wf-row:first-child .wf-toggle");
assert.equal(await page.locator(".wf-row").count(), 1);
await page.click(".wf-row:first-child .wf-toggle");
assert.equal(await page.locator(".wf-row").count(), 3);
await shot(page, "trace-otlp");

// A gateway trace: the request span above the provider call, and the SDK's messages.
await page.goto(`${base}/trace/${expect.chat_trace}`);
await page.waitForSelector(".wf-row");
const names = await page.$$eval(".wf-row .wf-name", (els) => els.map((e) => e.textContent.replace(/^[▾▸⚠ \u00a0]+/, "")));
assert.match(names[0], /^POST \/v1\/openai\/v1\/chat\/completions$/);
assert.match(names[1], /^chat echo$/);
await page.click(".wf-row:nth-child(2)");
await page.waitForSelector("#chat .msg");
const messages = await page.$$eval("#chat .msg", (els) => els.map((e) => e.className.replace("msg ", "")));
assert.deepEqual(messages, ["system", "user", "assistant"]);
assert.match(await page.innerText("#chat"), /You answer in one line\.[\s\S]*What is a span\?/);
await shot(page, "trace");
// "Open as JSON" opens the get_span_tree answer.
const [popup] = await Promise.all([page.waitForEvent("popup"), page.click("#open-json")]);
await popup.waitForLoadState();
const tree = JSON.parse(await popup.innerText("body"));
assert.equal(Object.keys(tree.data).length, 2);
await popup.close();

// A 1,000-span trace renders every row and still answers the keyboard.
await page.goto(`${base}/trace/${expect.big_trace}`);
await page.waitForSelector(".wf-row");
assert.equal(await page.locator(".wf-row").count(), 1000);
await page.keyboard.press("ArrowDown");
await page.waitForSelector(".wf-row.selected:nth-child(2)");

// Dashboard: its numbers are the store's: calls, tokens, and the tokens chart the metrics'.
await page.goto(`${base}/dashboard`);
await page.waitForSelector("#per-model");
assert.equal((await page.innerText("#card-calls .v")).replace(/,/g, ""), String(expect.calls));
assert.equal((await page.innerText("#card-input .v")).replace(/,/g, ""), String(expect.input_tokens));
// The echo model costs nothing; the agent's gpt-x has no price, so the total says it is partial.
assert.equal(await page.innerText("#card-cost .v"), "$0.00+?");
await page.waitForSelector("#tokens-chart");
assert.equal(Number(await page.getAttribute("#tokens-chart", "data-total")), expect.metric_tokens);
const titles = await page.$$eval("#tokens-chart title", (els) => els.map((e) => e.textContent));
assert.ok(titles.some((t) => /input: \d/.test(t)), "bars say their numbers on hover");
// Per model: requests, p95 latency and error rate as bars, each saying its number on hover.
assert.equal(await page.getAttribute("#model-calls", "data-rows"), "2");
const callBars = await page.$$eval("#model-calls title", (els) => els.map((e) => e.textContent).sort());
assert.deepEqual(callBars, ["echo: 4", "gpt-x: 1"]);
const errorBars = await page.$$eval("#model-errors title", (els) => els.map((e) => e.textContent).sort());
assert.deepEqual(errorBars, ["echo: 0.0 %", "gpt-x: 100.0 %"]);
// Most tokens first: the agent's 150 before echo's.
assert.match(await page.innerText("#per-model"), /gpt-x[\s\S]*echo/);
await shot(page, "dashboard");

// Sessions: the session with its turn.
await page.goto(`${base}/sessions`);
await page.waitForSelector("details.session");
const session = page.locator('details.session[data-session="s-1"]');
assert.equal(await session.locator("summary .cost").innerText(), "?", "its one call has no price");
await session.locator("summary").click();
await session.locator("tbody tr").first().waitFor();
assert.equal(await session.locator("tbody tr").count(), 1);
await shot(page, "sessions");

// Metrics explorer.
await page.goto(`${base}/explore?metric=prompt_tokens`);
await page.waitForSelector("#series tbody tr");
assert.match(await page.innerText("#series"), /model_id=echo/);
await shot(page, "metrics");

// The dark theme follows the system setting.
const dark = await newPage("dark");
await dark.goto(`${base}/`);
await dark.waitForSelector("#trace-table");
const bg = await dark.evaluate(() => getComputedStyle(document.body).backgroundColor);
assert.equal(bg, "rgb(18, 21, 28)");
await shot(dark, "traces-dark");

await browser.close();
assert.deepEqual(offsite, [], "no request leaves the server's origin");
assert.deepEqual(problems, [], "no console errors");
console.log("done");
