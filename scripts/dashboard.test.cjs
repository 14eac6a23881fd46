// The dashboard in headless Chromium, against the `larder serve` that
// scripts/dashboard.sh started (LARDER_HTTP, with the tokens in
// LARDER_TEST_ADMIN_TOKEN / LARDER_TEST_READ_TOKEN).
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { chromium } = require("playwright-core");

const BASE = process.env.LARDER_HTTP;
const ADMIN = process.env.LARDER_TEST_ADMIN_TOKEN;
const READ = process.env.LARDER_TEST_READ_TOKEN;
const ENTITIES = process.env.LARDER_ENTITIES.split(",");

async function call(method, path, body) {
  const res = await fetch(BASE + path, {
    method,
    headers: { Authorization: "Bearer " + ADMIN, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  await res.arrayBuffer();
  return res.status;
}

// A few seconds of mixed traffic: hot and cold users (hits, misses, near
// hits), missing ids (negative), teams, and write-back events.
async function traffic(seconds) {
  const until = Date.now() + seconds * 1000;
  let round = 0;
  while (Date.now() < until) {
    round++;
    const calls = [];
    for (let i = 0; i < 20; i++) calls.push(call("GET", "/v1/users/" + (1 + ((round * 7 + i * 13) % (i < 14 ? 12 : 400)))));
    for (let i = 0; i < 3; i++) calls.push(call("GET", "/v1/users/" + (5000 + round + i)));
    calls.push(call("GET", "/v1/teams/" + (round % 10)));
    calls.push(call("PUT", "/v1/events/" + (round % 25), { kind: "click", n: round }));
    for (let i = 0; i < 4; i++) calls.push(call("GET", "/v1/events/" + ((round + i * 5) % 30)));
    const statuses = await Promise.all(calls);
    for (const s of statuses) assert.ok([200, 202, 404].includes(s), "status " + s);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("the dashboard shows every entity and follows the traffic", async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const problems = [];
    page.on("console", (m) => m.type() === "error" && problems.push("console: " + m.text()));
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("requestfailed", (r) => problems.push("request failed: " + r.url()));

    const res = await page.goto(BASE + "/");
    assert.equal(res.status(), 200);
    assert.equal(await page.title(), "larder");

    // A token is configured: the page asks for it before any data call.
    await page.waitForSelector("#login:not([hidden])");
    assert.equal(await page.textContent("#status"), "token needed");
    await page.fill("#token", READ);
    await page.click("#login button");

    for (const name of ENTITIES) {
      await page.waitForSelector(`[data-entity="${name}"]`, { timeout: 10000 });
    }
    const shown = await page.$$eval("[data-entity]", (els) => els.map((e) => e.dataset.entity));
    assert.deepEqual([...shown].sort(), [...ENTITIES].sort());
    await page.waitForSelector('#status[data-state="live"]');
    const readsOf = (name) =>
      page.textContent(`[data-entity="${name}"] [data-field="reads_total"]`);
    const before = await readsOf("users");

    await traffic(12);

    // The page polls every second: its figures follow what the service did.
    const stats = await (await fetch(BASE + "/v1/stats", { headers: { Authorization: "Bearer " + READ } })).json();
    const want = stats.entities.users.reads_total;
    await page.waitForFunction(
      ([w]) => {
        const t = document.querySelector('[data-entity="users"] [data-field="reads_total"]').textContent;
        return Number(t.replace(/,/g, "")) >= w;
      },
      [want],
      { timeout: 10000 },
    );
    const after = await readsOf("users");
    assert.notEqual(after, before, "the users' read count changed");
    await page.screenshot({ path: process.env.DASHBOARD_PNG, fullPage: true });
    const ratio = await page.textContent('[data-entity="users"] [data-field="hit_ratio"]');
    assert.match(ratio, /^\d+\.\d%$/);
    assert.notEqual(await page.textContent('[data-entity="users"] [data-field="cache_ms_p50"]'), "–");
    assert.notEqual(await page.textContent('[data-entity="users"] [data-field="load_ms_p99"]'), "–");
    assert.match(await page.textContent('[data-entity="events"] [data-field="write"]'), /back/);
    assert.notEqual(await page.textContent('[data-entity="events"] [data-field="wb_rows"]'), "0");
    // Loads, lease waits and the near cache per entity; write-back's
    // backlog, lag and dead letters: each a figure, not a placeholder.
    const field = (entity, name) => page.textContent(`[data-entity="${entity}"] [data-field="${name}"]`);
    const count = (text) => Number(text.replace(/,/g, ""));
    for (const name of ["loads", "lease_waits", "l1_entries", "l1_evictions"]) {
      assert.match(await field("users", name), /^[\d,]+$/, "users " + name);
    }
    assert.ok(count(await field("users", "loads")) > 0, "the misses loaded");
    assert.ok(count(await field("users", "l1_entries")) > 0, "the near cache holds entries");
    for (const name of ["wb_backlog", "wb_dead"]) {
      assert.match(await field("events", name), /^[\d,]+$/, "events " + name);
    }
    assert.match(await field("events", "wb_lag"), /^(–|[\d.,]+ (µs|ms|s))$/);
    assert.match(await page.textContent("#mem-text"), /^memory /);
    assert.notEqual(await page.textContent('[data-field="maxmemory_policy"]'), "–");

    // The chart has bars: coloured pixels on each entity's canvas.
    const painted = await page.$$eval("[data-entity] canvas", (cs) =>
      cs.map((c) => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let coloured = 0;
        for (let i = 0; i < d.length; i += 4) {
          const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
          if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
        }
        return coloured;
      }),
    );
    assert.ok(painted.every((n) => n > 50), "every chart has bars: " + painted);

    // The token is kept for the tab: a reload goes live without asking.
    await page.reload();
    await page.waitForSelector('#status[data-state="live"]', { timeout: 10000 });
    assert.ok(await page.$eval("#login", (e) => e.hidden), "the login form stays hidden");

    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});
