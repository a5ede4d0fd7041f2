// The web UI in a real browser (Debian's Chromium, headless, driven by playwright-core),
// against a real appliance. Run by tests/tests/ui.rs, which starts the appliance and an
// agent; the two talk over this process's stdin and stdout, one JSON object per line.
//
// Environment: LIFEBOAT_URL (the configuration server), LIFEBOAT_SETUP_TOKEN,
// LIFEBOAT_SHOTS (the folder for screenshots), CHROMIUM (default /usr/bin/chromium).
//
// What it checks: the wizard refuses a wrong setup token and mismatched passwords beside
// their fields, claims the appliance, refuses a bad agent address, shows the target
// plugins' declared settings as forms (a required one left empty and a number given text
// refused beside their fields, the plugin's own refusal and test result shown), keeps the
// local target, refuses a mistyped recovery passphrase, shows the registration command (which the Rust side then runs); the
// dashboard shows the registered machine protected without a reload; a wizard left half
// way resumes at its step; a session that ended returns to the login; the machine's page
// draws its plots from stored samples, a plugin uploaded from the Plugins screen waits in
// quarantine until trusted from a confirmed dialog, refuses a bad VM setting beside its field, and runs
// a test failover and its cleanup as jobs followed live; axe-core finds no
// serious or critical violation on any screen; every screen is saved as a screenshot.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const url = process.env.LIFEBOAT_URL;
const token = process.env.LIFEBOAT_SETUP_TOKEN;
const shots = process.env.LIFEBOAT_SHOTS;
mkdirSync(shots, { recursive: true });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const log = (m) => process.stderr.write(`browser: ${m}\n`);
const screens = [];

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

// axe-core on the page as it is, then a screenshot.
async function screen(page, name) {
  await page.evaluate(axeSource);
  const r = await page.evaluate(() => axe.run(document, { resultTypes: ["violations"] }));
  const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) log(`${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  check(bad.length === 0, `${name}: ${bad.length} serious or critical accessibility violation(s)`);
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  screens.push(name);
  log(`screen ${name}: axe ok, screenshot saved`);
}

const fieldError = (page, label) =>
  page.getByLabel(label, { exact: true }).evaluate((el) => {
    const ids = (el.getAttribute("aria-describedby") || "").split(" ");
    return ids.map((id) => document.getElementById(id)).filter((e) => e && e.classList.contains("error")).map((e) => e.textContent).join(" ");
  });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-background-networking"],
});
try {
  // The appliance's certificate is issued by its own CA, which this browser does not know.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const cspViolations = [];
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  await page.goto(url);

  // 1. Claim.
  await page.getByRole("heading", { name: "Claim the appliance" }).waitFor();
  await screen(page, "01-claim");
  await page.getByLabel("Setup token", { exact: true }).fill("AAAAA-BBBBB-CCCCC-DDDDD");
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByLabel("Password again", { exact: true }).fill("correct horse battery!");
  await page.getByRole("button", { name: "Claim" }).click();
  await page.getByText("the two passwords differ").waitFor();
  check((await fieldError(page, "Password again")).includes("differ"), "the mismatch is shown beside the second password");
  await page.getByLabel("Password again", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Claim" }).click();
  await page.locator(".field.bad").first().waitFor();
  const tokenError = await fieldError(page, "Setup token");
  check(/setup token/i.test(tokenError), `a wrong setup token is refused beside its field (${tokenError})`);
  await screen(page, "02-claim-refused");
  await page.getByLabel("Setup token", { exact: true }).fill(token.toLowerCase());
  await page.getByRole("button", { name: "Claim" }).click();

  // 2. Identity.
  await page.getByRole("heading", { name: "Identity" }).waitFor();
  // The form is filled from the appliance once it answered (the CA fingerprint shows it).
  await page.locator("code.fp").waitFor();
  const agentUrl = await page.getByLabel("Address agents send to").inputValue();
  check(agentUrl.startsWith("https://"), `the agent address is prefilled (${agentUrl})`);
  await page.getByText(/clocks? .*agree|clock is/).waitFor();
  // The certificate for 443: the appliance CA's; an upload that is not a certificate is
  // refused beside its field.
  await page.locator('p[data-cert-source="appliance-ca"]').waitFor();
  await page.getByText("Use a certificate from your own CA").click();
  await page.getByLabel("Certificate chain (PEM, leaf first)").fill("not a certificate");
  await page.getByLabel("Its private key (PEM)").fill("not a key");
  await page.getByRole("button", { name: "Use this certificate" }).click();
  await page.locator(".field.bad").first().waitFor();
  check((await fieldError(page, "Certificate chain (PEM, leaf first)")).length > 0, "a malformed certificate is refused beside its field");
  await screen(page, "03-identity");
  await page.getByLabel("Appliance name").fill("dr-site-a");
  await page.getByLabel("Address agents send to").fill("http://nowhere");
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator('.field.bad input[name="agent_url"]').waitFor();
  check((await fieldError(page, "Address agents send to")).includes("https://"), "a bad agent address is refused beside its field");
  await page.getByLabel("Address agents send to").fill(agentUrl);
  await page.getByRole("button", { name: "Next" }).click();

  // 3. Target: the installed target plugins, each with the form its manifest declares. The
  // Azure target (installed, granted no host) refuses what it should; the local one is
  // tested and kept.
  await page.getByRole("heading", { name: "Target", exact: true }).waitFor();
  await page.getByRole("radio", { name: /^local/ }).waitFor();
  check(await page.getByRole("radio", { name: /^local/ }).isChecked(), "the configured target is chosen");
  await page.getByRole("radio", { name: /^azure/ }).check();
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator(".field.bad").first().waitFor();
  check((await fieldError(page, "Storage account (required)")).includes("required"), "a required setting left empty is refused beside its field");
  await page.getByLabel("Storage account (required)", { exact: true }).fill("acct");
  await page.getByLabel("Storage account key (required)", { exact: true }).fill("a2V5LW5vdC1yZWFs");
  await page.getByText(/^More settings/).click();
  await page.getByLabel("Request timeout (ms)", { exact: true }).fill("soon");
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator(".field.bad").first().waitFor();
  check((await fieldError(page, "Request timeout (ms)")).includes("whole number"), "a number setting refuses text beside its field");
  await page.getByLabel("Request timeout (ms)", { exact: true }).fill("");
  // The server asks the plugin's own init, whose words are shown.
  await page.getByLabel("Container", { exact: true }).fill("Not_A_Container");
  await page.getByRole("button", { name: "Next" }).click();
  const refusedBy = await page.locator(".form-error").textContent();
  check(/azure refused these settings/.test(refusedBy) && /container/.test(refusedBy), `the plugin's own refusal is shown (${refusedBy})`);
  await page.getByLabel("Container", { exact: true }).fill("");
  await page.getByRole("button", { name: "Test connection" }).click();
  await page.locator("p[data-ok]").waitFor({ timeout: 30000 });
  const azureSaid = await page.locator("p[data-ok]").textContent();
  check((await page.locator("p[data-ok]").getAttribute("data-ok")) === "false" && /http_hosts/.test(azureSaid), `Test connection shows the plugin's own error (${azureSaid})`);
  await screen(page, "03b-target-refused");
  await page.getByRole("radio", { name: /^local/ }).check();
  await page.getByRole("button", { name: "Test connection" }).click();
  await page.locator('p[data-ok="true"]').waitFor({ timeout: 30000 });
  await screen(page, "03c-target");
  await page.getByRole("button", { name: "Next" }).click();

  // 4. Protection: a wizard left here resumes here.
  await page.getByRole("heading", { name: "Protection defaults" }).waitFor();
  await page.reload();
  await page.getByRole("heading", { name: "Protection defaults" }).waitFor();
  await screen(page, "04-protection");
  const shown = await page.getByTestId("recovery-passphrase").textContent();
  check(/^[A-Z0-9]{4}(-[A-Z0-9]{4}){5}$/.test(shown.trim()), `a recovery passphrase is shown (${shown})`);
  await page.getByLabel("RPO warning after (s)").fill("soon");
  await page.getByLabel("Type the recovery passphrase again").fill(shown.trim());
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator(".field.bad").first().waitFor();
  check((await fieldError(page, "RPO warning after (s)")).includes("whole number"), "a bad number is refused beside its field");
  // The server's own check: a critical threshold below the warning one.
  await page.getByLabel("RPO warning after (s)").fill("120");
  await page.getByLabel("RPO critical after (s)").fill("60");
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator(".field.bad, .form-error").first().waitFor();
  await screen(page, "05-protection-refused");
  await page.getByLabel("RPO critical after (s)").fill("600");
  await page.getByLabel("Type the recovery passphrase again").fill("WRONG-" + shown.trim());
  await page.getByRole("button", { name: "Next" }).click();
  await page.getByText("type the recovery passphrase exactly as shown above").waitFor();
  await page.getByLabel("Type the recovery passphrase again").fill(shown.trim());
  await page.getByRole("button", { name: "Next" }).click();

  // 5. Add machines: the registration command, run by the Rust side.
  await page.getByRole("heading", { name: "Add machines" }).waitFor();
  await page.getByRole("button", { name: "Make a registration passphrase" }).click();
  const command = await page.getByTestId("register-command").textContent();
  // The package install command (the test serves the packages `cargo xtask package` made).
  const install = await page.getByTestId("install-command").textContent();
  check(install.includes(" sudo LIFEBOAT_PASSPHRASE='") && install.includes("/downloads/install.sh"), `the install command carries the passphrase (${install})`);
  await page.getByText("Packages this appliance serves").click();
  await page.getByRole("link", { name: /^lifeboat-agent_.*_amd64\.deb$/ }).waitFor();
  await screen(page, "06-add-machines");
  say({ command, install });
  const reply = JSON.parse((await lines.next()).value);
  check(reply.registered, "the Rust side registered the agent");
  // Install over SSH: checked before it is sent, then a machine that does not answer is
  // reported as the job's failure, beside the form.
  await page.getByRole("button", { name: "Install the agent" }).click();
  check((await fieldError(page, "Host")).includes("host name or address"), "an empty host is refused beside its field");
  await page.getByLabel("Host", { exact: true }).fill("127.0.0.1");
  await page.getByLabel("SSH port").fill("1");
  await page.getByLabel("Password", { exact: true }).fill("whatever");
  await page.getByRole("button", { name: "Install the agent" }).click();
  await page.getByText(/unreachable: cannot connect to 127\.0\.0\.1:1/).waitFor({ timeout: 30000 });
  await screen(page, "06b-push-unreachable");
  await page.getByRole("button", { name: "Finish" }).click();

  // 6. The dashboard: the machine appears protected without a reload.
  await page.getByRole("heading", { name: "Machines" }).waitFor();
  const row = page.locator(`tr[data-machine="${reply.machine}"]`);
  await row.getByText("protected").waitFor({ timeout: 60000 });
  check((await row.textContent()).includes(reply.hostname), "the row names the machine's host");
  await screen(page, "07-dashboard");
  await page.getByLabel("Filter").fill("no-such-machine");
  check((await row.count()) === 0, "the filter hides rows that do not match");
  await page.getByLabel("Filter").fill("");
  await page.getByRole("link", { name: "Alerts" }).click();
  await page.getByRole("heading", { name: "Alerts" }).waitFor();
  await page.locator("ul.alerts, p.ok").first().waitFor();
  await screen(page, "08-alerts");
  await page.getByRole("link", { name: "Jobs" }).click();
  await page.getByRole("heading", { name: "Jobs" }).waitFor();
  await screen(page, "09-jobs");

  // 7. A session that ends (here: ended from elsewhere, its cookie kept) returns to the
  // login with a word on why; logging in again comes back to the dashboard.
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "lifeboat_session");
  check(session && session.httpOnly && session.secure && session.sameSite === "Strict", "the session cookie is HttpOnly, Secure, SameSite=Strict");
  check(!(await page.evaluate(() => document.cookie)).includes("lifeboat_session"), "the page cannot read the session cookie");
  await page.evaluate(() => fetch("/api/v1/logout", { method: "POST", headers: { "X-Lifeboat-Csrf": "1" } }));
  await context.addCookies([session]);
  await page.getByRole("link", { name: "Machines" }).click();
  await page.getByText("Your session ended; log in again.").waitFor({ timeout: 10000 });
  await screen(page, "10-login");
  await page.getByLabel("Administrator name").fill("admin");
  await page.getByLabel("Password", { exact: true }).fill("wrong password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("wrong name or password").waitFor();
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator(`tr[data-machine="${reply.machine}"]`).waitFor();

  // 8. The machine's page: plots drawn from the stored samples, the points timeline, the
  // VM settings (a bad value refused beside its field, a good one saved), and a test
  // failover started from the page, followed live to its end, then cleaned up.
  await page.locator(`tr[data-machine="${reply.machine}"]`).getByRole("link", { name: reply.hostname }).click();
  await page.getByRole("heading", { name: reply.hostname, exact: true }).waitFor();
  await page.locator("figure.plot canvas").first().waitFor({ timeout: 20000 });
  const rpoSummary = await page.locator("figure.plot .help").first().textContent();
  check(/^\d+ samples; now /.test(rpoSummary), `the RPO plot is drawn from stored samples (${rpoSummary})`);
  check((await page.locator(".timeline .mark").count()) >= 1, "the points timeline shows the point");
  await page.getByLabel("CPUs").fill("0");
  await page.getByRole("button", { name: "Save the VM settings" }).click();
  await page.locator(".field.bad").first().waitFor();
  check((await fieldError(page, "CPUs")).includes("1 to 256"), "the server's refusal of 0 CPUs is shown beside the field");
  await screen(page, "12-machine");
  await page.getByLabel("CPUs").fill("2");
  await page.getByLabel("Memory (MiB)").fill("1024");
  await page.getByLabel("Target network").first().fill("dr-test-lan");
  await page.getByRole("button", { name: "Save the VM settings" }).click();
  await page.getByText("Saved: the next failover makes this VM.").waitFor();
  const spec = await page.evaluate(async (id) => (await fetch(`/api/v1/machines/${id}/vm-spec`)).json(), reply.machine);
  check(spec.cpus === 2 && spec.memory_mib === 1024 && spec.nics[0]?.network === "dr-test-lan", `the VM settings were saved (${JSON.stringify(spec)})`);
  await page.getByRole("button", { name: "Test failover…" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.getByLabel("Recovery point").selectOption("latest-processed");
  await screen(page, "13-test-failover-confirm");
  await dialog.getByRole("button", { name: "Test failover", exact: true }).click();
  await page.locator('.job[data-state="succeeded"]').waitFor({ timeout: 60000 });
  const cleanup = page.getByRole("button", { name: /^Clean up test failover / });
  await cleanup.waitFor();
  await screen(page, "14-test-failover-done");
  await cleanup.click();
  await page.getByRole("dialog").getByRole("button", { name: "Clean up the test failover" }).click();
  await page.locator('.job[data-state="succeeded"]').nth(1).waitFor({ timeout: 60000 });
  await cleanup.waitFor({ state: "detached" });
  const tfs = await page.evaluate(async () => (await fetch("/api/v1/test-failovers")).json());
  check(tfs.test_failovers.length === 1 && tfs.test_failovers[0].cleaned_unix_ms, `the test failover was made and cleaned up (${JSON.stringify(tfs)})`);
  say({ test_failover: tfs.test_failovers[0] });

  // 9. Recovery plans: one made in the editor (a refused plan first), run as a test
  // failover, its manual step confirmed from the page, followed to its end.
  await page.getByRole("link", { name: "Plans", exact: true }).click();
  await page.getByRole("heading", { name: "Recovery plans" }).waitFor();
  await page.getByRole("button", { name: "New plan…" }).click();
  await page.getByLabel("Plan name").fill("web-tier");
  await page.getByLabel("Plan (JSON)").fill(JSON.stringify({ groups: [{ machines: ["11111111-2222-3333-4444-555555555555"] }] }));
  await page.getByRole("button", { name: "Save the plan" }).click();
  await page.locator(".form-error").waitFor();
  const planError = await page.locator(".form-error").textContent();
  check(/groups\[0\]\.machines\[0\]: no machine/.test(planError), `a plan naming an unknown machine is refused (${planError})`);
  await page
    .getByLabel("Plan (JSON)")
    .fill(JSON.stringify({ groups: [{ machines: [reply.machine], pre: [{ manual: "Tell the web team the test starts" }] }] }, null, 2));
  await page.getByRole("button", { name: "Save the plan" }).click();
  await page.locator('article[data-plan="web-tier"]').waitFor();
  check((await page.locator('article[data-plan="web-tier"]').textContent()).includes(reply.hostname), "the plan names its machine by host name");
  await page.getByRole("button", { name: "Run web-tier…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Run web-tier" }).click();
  const confirmStep = page.getByRole("button", { name: /^Confirm step 1: Tell the web team/ });
  await confirmStep.waitFor({ timeout: 30000 });
  await screen(page, "15-plan-waiting");
  await confirmStep.click();
  await page.locator('.job[data-state="succeeded"] ol.plan-log').waitFor({ timeout: 60000 });
  await screen(page, "16-plan-done");
  // Clean the plan's test failover up (the page of the machine offers it; the API here).
  const live = await page.evaluate(async () => (await (await fetch("/api/v1/test-failovers")).json()).test_failovers.filter((t) => !t.cleaned_unix_ms));
  check(live.length === 1, `the plan made one test failover (${JSON.stringify(live)})`);
  await page.evaluate(async (id) => fetch(`/api/v1/test-failovers/${id}/cleanup`, { method: "POST", headers: { "X-Lifeboat-Csrf": "1" } }), live[0].id);

  // 10. The plugins: the local target pinned, with the settings it declares; tested.
  await page.getByRole("link", { name: "Plugins", exact: true }).click();
  const local = page.locator('article[data-plugin="local"]');
  await local.waitFor();
  check((await local.textContent()).includes("pinned"), "the local target is shown pinned");
  check((await local.locator('tr[data-setting="root"] td').textContent()) === "/target", "its root setting is shown");
  await local.getByRole("button", { name: "Test connection of local" }).click();
  const health = local.locator("p[data-ok]");
  await health.waitFor({ timeout: 30000 });
  const said = await health.textContent();
  check((await health.getAttribute("data-ok")) === "true" && /writable/.test(said), `the local target's own health message is shown (${said})`);
  await screen(page, "17-plugins");
  // Upload a plugin: a build that is not its manifest's sha256 is refused; the real one
  // waits in quarantine (not loaded) until trusted from a confirmed dialog, then loads pinned.
  const built = process.env.LIFEBOAT_BUILT_PLUGINS;
  await page.setInputFiles("#upload-wasm", `${built}/zstd.wasm`);
  await page.setInputFiles("#upload-toml", `${built}/hostile.toml`);
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  const uploadError = await page.locator("form[aria-labelledby=upload-h] .form-error").textContent();
  check(/sha256/.test(uploadError), `a build that is not the manifest's is refused (${uploadError})`);
  await page.setInputFiles("#upload-wasm", `${built}/hostile.wasm`);
  await page.setInputFiles("#upload-toml", `${built}/hostile.toml`);
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  const upload = page.locator('article[data-upload="hostile"]');
  await upload.waitFor();
  check((await upload.locator("dd[data-once]").getAttribute("data-once")) === "loads", "the upload is described, loading once trusted");
  check((await page.locator('article[data-plugin="hostile"]').count()) === 0, "a quarantined plugin is not loaded");
  await screen(page, "17b-plugins-quarantine");
  await upload.getByRole("button", { name: "Trust hostile…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Trust and install hostile" }).click();
  await page.locator('article[data-plugin="hostile"]').waitFor({ timeout: 15000 });
  check((await page.locator('article[data-plugin="hostile"]').textContent()).includes("pinned"), "the trusted upload loads pinned");
  check((await page.locator('article[data-upload="hostile"]').count()) === 0, "it left quarantine");

  // 11. Settings: a new registration passphrase shown once (the old unused ones stop
  // working), the CA's first rotation step confirmed, the recovery passphrase set.
  await page.getByRole("link", { name: "Settings", exact: true }).click();
  await page.getByRole("heading", { name: "Registration passphrases" }).waitFor();
  // The target in use, locked to it now that a machine is registered.
  await page.getByRole("radio", { name: /^local/ }).waitFor();
  check(await page.getByRole("radio", { name: /^azure/ }).isDisabled(), "another target cannot be chosen once machines are registered");
  await page.getByRole("button", { name: "Make a new registration passphrase…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Make it" }).click();
  const fresh = (await page.getByTestId("new-passphrase").textContent()).trim();
  check(fresh.length >= 16, `a new registration passphrase is shown (${fresh})`);
  await page.locator('p[data-unused="1"]').waitFor({ timeout: 10000 });
  check((await page.locator("p[data-recovery]").getAttribute("data-recovery")) === "true", "the recovery passphrase shows as set");
  await page.locator('dd[data-phase="steady"]').waitFor();
  await page.getByRole("button", { name: "Introduce a new CA…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Introduce a new CA" }).click();
  await page.locator('dd[data-phase="introducing"]').waitFor({ timeout: 10000 });
  // Administrators: one added (mismatched passwords refused beside the field first); the
  // sessions list marks this one.
  await page.getByLabel("New administrator's name", { exact: true }).fill("ops");
  await page.getByLabel("Their password", { exact: true }).fill("another long password");
  await page.getByLabel("Their password again", { exact: true }).fill("another long passwort");
  await page.getByRole("button", { name: "Add administrator" }).click();
  check((await fieldError(page, "Their password again")).includes("differ"), "mismatched passwords are refused beside the field");
  await page.getByLabel("Their password again", { exact: true }).fill("another long password");
  await page.getByRole("button", { name: "Add administrator" }).click();
  await page.locator('tr[data-admin="ops"]').waitFor({ timeout: 10000 });
  await page.locator('tr[data-current="true"]').waitFor({ timeout: 10000 });
  await screen(page, "18-settings");

  // 12. Policies: a new one whose retention tier is refused beside its field, then saved;
  // deleted (unused) after a confirmation.
  await page.getByRole("link", { name: "Policies", exact: true }).click();
  await page.locator('tr[data-policy="default"]').waitFor();
  await page.getByRole("button", { name: "New policy" }).click();
  await page.getByLabel("Name", { exact: true }).fill("gold");
  await page.getByLabel("Crash-consistent point every (s)", { exact: true }).fill("60");
  await page.getByRole("button", { name: "Add a tier" }).click();
  await page.getByLabel("Tier 1: keep one point per (s)", { exact: true }).fill("hourly");
  await page.getByLabel("Tier 1: up to an age of (s)", { exact: true }).fill("86400");
  await page.getByRole("button", { name: "Save policy" }).click();
  check((await fieldError(page, "Tier 1: keep one point per (s)")).includes("whole number"), "a bad retention tier is refused beside its field");
  await page.getByLabel("Tier 1: keep one point per (s)", { exact: true }).fill("3600");
  await page.getByLabel("RPO warning after (s)", { exact: true }).fill("120");
  await page.getByLabel("RPO critical after (s)", { exact: true }).fill("60");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator(".field.bad, .form-error").first().waitFor();
  await screen(page, "19-policy-refused");
  await page.getByLabel("RPO critical after (s)", { exact: true }).fill("600");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator('tr[data-policy="gold"]').waitFor({ timeout: 10000 });
  check((await page.locator('tr[data-policy="gold"]').textContent()).includes("1 per"), "the saved policy shows its retention tier");
  await screen(page, "20-policies");
  await page.getByRole("button", { name: "Delete gold…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Delete gold" }).click();
  await page.locator('tr[data-policy="gold"]').waitFor({ state: "detached", timeout: 10000 });

  // 13. A narrow window still shows the machine.
  await page.getByRole("link", { name: "Machines", exact: true }).click();
  await page.locator(`tr[data-machine="${reply.machine}"]`).waitFor();
  await page.setViewportSize({ width: 420, height: 800 });
  await screen(page, "11-dashboard-narrow");

  check(cspViolations.length === 0, `no Content-Security-Policy violation (${cspViolations.join("; ")})`);
  say({ done: true, screens });
} finally {
  await browser.close();
  // Stop reading stdin, or node waits for the test to close it.
  process.stdin.destroy();
}
