// The UI benchmark's browser side (run by `cargo xtask bench ui` against an appliance it
// seeded with machines): loads the dashboard LIFEBOAT_LOADS times, each in a fresh browser
// context (empty cache, the session cookie given), and measures the time from the
// navigation's start until the machines list shows LIFEBOAT_MACHINES rows, and the
// compressed bytes of the first load (page, script, stylesheet; the API's JSON apart).
// axe-core then checks the full dashboard and a machine's page. Prints one JSON line.
//
// Environment: LIFEBOAT_URL, LIFEBOAT_USER, LIFEBOAT_PASSWORD, LIFEBOAT_MACHINES,
// LIFEBOAT_LOADS, LIFEBOAT_SHOTS, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const url = process.env.LIFEBOAT_URL;
const machines = Number(process.env.LIFEBOAT_MACHINES);
const loads = Number(process.env.LIFEBOAT_LOADS || 5);
const shots = process.env.LIFEBOAT_SHOTS;
mkdirSync(shots, { recursive: true });
const log = (m) => process.stderr.write(`bench: ${m}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking"],
});
const newContext = () => browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
try {
  // Log in once; every load's fresh context gets the session cookie.
  const first = await newContext();
  const p0 = await first.newPage();
  await p0.goto(url);
  const status = await p0.evaluate(
    async ([name, password]) =>
      (
        await fetch("/api/v1/login", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-Lifeboat-Session": "cookie", "X-Lifeboat-Csrf": "1" },
          body: JSON.stringify({ name, password }),
        })
      ).status,
    [process.env.LIFEBOAT_USER, process.env.LIFEBOAT_PASSWORD],
  );
  if (status !== 200) throw new Error(`login answered ${status}`);
  // The appliance was set up through the CLI: its wizard is left at the identity step.
  const wizard = await p0.evaluate(
    async () =>
      (
        await fetch("/api/v1/wizard", {
          method: "PUT",
          headers: { "Content-Type": "application/json", "X-Lifeboat-Csrf": "1" },
          body: JSON.stringify({ step: "done" }),
        })
      ).status,
  );
  if (wizard !== 200) throw new Error(`PUT /api/v1/wizard answered ${wizard}`);
  const cookies = await first.cookies();
  await first.close();

  const dashboardMs = [];
  let firstLoad = null;
  let files = null;
  let apiBytes = null;
  let page;
  let context;
  for (let i = 0; i < loads; i++) {
    if (context) await context.close();
    context = await newContext();
    await context.addCookies(cookies);
    page = await context.newPage();
    const tracing = process.env.LIFEBOAT_BENCH_TRACE && i === loads - 1;
    if (tracing) await browser.startTracing(page, { categories: ["devtools.timeline", "disabled-by-default-devtools.timeline"] });
    await page.goto(`${url}/#/machines`, { waitUntil: "commit" });
    try {
      await page.waitForFunction((n) => document.querySelectorAll("tr[data-machine]").length >= n, machines, {
        polling: "raf",
        timeout: 60000,
      });
    } catch (e) {
      log(`the page shows: ${(await page.locator("body").innerText()).slice(0, 400)}`);
      throw e;
    }
    const ms = await page.evaluate(() => performance.now());
    if (tracing) {
      // Where the renderer's main thread spent the load: time by trace event name.
      const trace = JSON.parse((await browser.stopTracing()).toString());
      const by = {};
      for (const e of trace.traceEvents) if (e.ph === "X" && e.dur) by[e.name] = (by[e.name] || 0) + e.dur / 1000;
      log(Object.entries(by).sort((a, b) => b[1] - a[1]).slice(0, 25).map(([n, d]) => `${n}: ${Math.round(d)} ms`).join("; "));
    }
    dashboardMs.push(Math.round(ms));
    // Compressed bytes as they crossed the network (encodedBodySize).
    const sizes = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const res = performance.getEntriesByType("resource");
      // The API's answers (fetched, or preloaded by the page) apart from the files.
      const isApi = (r) => new URL(r.name).pathname.startsWith("/api/");
      const assets = res.filter((r) => !isApi(r));
      const api = res.filter(isApi);
      return {
        files: [{ name: new URL(nav.name).pathname, bytes: nav.encodedBodySize }, ...assets.map((r) => ({ name: new URL(r.name).pathname, bytes: r.encodedBodySize }))],
        api: api.reduce((s, r) => s + r.encodedBodySize, 0),
      };
    });
    const total = sizes.files.reduce((s, f) => s + f.bytes, 0);
    if (process.env.LIFEBOAT_BENCH_WATERFALL)
      log(
        await page.evaluate(() =>
          [performance.getEntriesByType("navigation")[0], ...performance.getEntriesByType("resource")]
            .map((r) => `${new URL(r.name).pathname} start ${Math.round(r.startTime)} ms, took ${Math.round(r.duration)} ms (wait ${Math.round(r.responseStart - r.requestStart)})`)
            .concat(performance.getEntriesByType("mark").map((m) => `${m.name} at ${Math.round(m.startTime)} ms`))
            .join("\n"),
        ),
      );
    if (firstLoad === null) {
      firstLoad = total;
      files = sizes.files;
      apiBytes = sizes.api;
    }
    log(`load ${i + 1}: ${machines} machines shown after ${Math.round(ms)} ms; first load ${total} bytes compressed`);
  }

  // The API's own share: GET /api/v1/machines alone, five times.
  const apiMs = await page.evaluate(async () => {
    const t = [];
    for (let i = 0; i < 5; i++) {
      const a = performance.now();
      await (await fetch("/api/v1/machines")).json();
      t.push(Math.round(performance.now() - a));
    }
    return t;
  });
  log(`GET /api/v1/machines alone: ${apiMs.join(", ")} ms`);

  // axe on the full dashboard and on a machine's page.
  const screens = [];
  const axeScreen = async (name) => {
    await page.evaluate(axeSource);
    const r = await page.evaluate(() => axe.run(document, { resultTypes: ["violations"] }));
    const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    for (const v of bad) log(`${name}: ${v.impact} ${v.id}: ${v.help}`);
    if (bad.length) throw new Error(`${name}: ${bad.length} serious or critical accessibility violation(s)`);
    await page.screenshot({ path: `${shots}/${name}.png` });
    screens.push(name);
  };
  await axeScreen("bench-dashboard-500");
  await page.locator("tr[data-machine] a").first().click();
  await page.locator("figure.plot, p:has-text('No sample yet')").first().waitFor();
  await axeScreen("bench-machine");
  await context.close();
  console.log(JSON.stringify({ dashboard_ms: dashboardMs, api_machines_ms: apiMs, first_load_bytes: firstLoad, first_load_files: files, api_bytes: apiBytes, screens }));
} finally {
  await browser.close();
}
