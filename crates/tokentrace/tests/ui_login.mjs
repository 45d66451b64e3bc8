// The web UI with server.auth on: it asks for a key, refuses a wrong one and one without
// telemetry.read, and with a reader's key shows the traces. Usage: node ui_login.mjs BASE
// READ_KEY APP_KEY; prints "done".
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const [base, readKey, appKey] = process.argv.slice(2);
const require = createRequire(`${process.env.TOKENTRACE_UI_NODE}/`);
const { chromium } = require("playwright-core");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const page = await browser.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
await page.goto(`${base}/`);
await page.waitForSelector("#login input[name=key]");
const signIn = async (key) => {
  await page.fill("#login input[name=key]", key);
  await page.click("#login button");
};
await signIn("not-a-key-at-all");
await page.waitForSelector(".error");
assert.match(await page.innerText(".error"), /not valid/);
await signIn(appKey);
await page.waitForFunction(() => /telemetry\.read/.test(document.querySelector(".error")?.textContent || ""));
assert.equal(await page.locator(".error").count(), 1);
await signIn(readKey);
await page.waitForSelector("#trace-table tbody tr");
assert.equal(await page.locator("#trace-table tbody tr").count(), 1);
// The key is in an HttpOnly cookie: the page's script cannot read it.
assert.equal(await page.evaluate(() => document.cookie), "");
await browser.close();
assert.deepEqual(errors, []);
console.log("done");
