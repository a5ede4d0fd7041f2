// The web UI in Firefox (Debian's firefox-esr, headless, driven over WebDriver BiDi by
// puppeteer-core), after the Chromium test set the appliance up: the login, the dashboard
// showing the machine, and the machine's page with its plots drawn, with no
// Content-Security-Policy violation. Run by tests/tests/ui.rs.
//
// Environment: LIFEBOAT_URL, LIFEBOAT_USER, LIFEBOAT_PASSWORD, LIFEBOAT_MACHINE,
// LIFEBOAT_SHOTS, FIREFOX (default /usr/bin/firefox-esr).
import puppeteer from "puppeteer-core";

const url = process.env.LIFEBOAT_URL;
const machine = process.env.LIFEBOAT_MACHINE;
const shots = process.env.LIFEBOAT_SHOTS;
const log = (m) => process.stderr.write(`firefox: ${m}\n`);
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
};

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  // The appliance's certificate is issued by its own CA, which this browser does not know.
  acceptInsecureCerts: true,
  extraPrefsFirefox: { "network.captive-portal-service.enabled": false, "app.update.enabled": false },
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const problems = [];
  page.on("console", (m) => {
    if (/Content.Security.Policy|CSP/i.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector("input[autocomplete=username]");
  await page.type("input[autocomplete=username]", process.env.LIFEBOAT_USER);
  await page.type("input[autocomplete=current-password]", process.env.LIFEBOAT_PASSWORD);
  await page.click("button[type=submit]");
  await page.waitForSelector(`tr[data-machine="${machine}"]`, { timeout: 30000 });
  const row = await page.$eval(`tr[data-machine="${machine}"]`, (r) => r.textContent);
  check(row.includes("protected"), `the dashboard shows the machine protected (${row})`);
  log("the dashboard shows the machine");
  await page.click(`tr[data-machine="${machine}"] a`);
  await page.waitForSelector("figure.plot canvas", { timeout: 30000 });
  const summary = await page.$eval("figure.plot .help", (p) => p.textContent);
  check(/^\d+ samples; now /.test(summary), `the RPO plot is drawn (${summary})`);
  await page.screenshot({ path: `${shots}/90-firefox-machine.png`, fullPage: true });
  log("the machine's page draws its plots; screenshot saved");
  check(problems.length === 0, `no CSP violation or page error (${problems.join("; ")})`);
  console.log(JSON.stringify({ firefox: (await browser.version()) || "firefox", ok: true }));
} finally {
  await browser.close();
}
