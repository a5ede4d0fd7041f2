// The dashboard: machines (sortable, filterable, refreshed every 2 s), alerts and jobs.
import { useState, useEffect } from "preact/hooks";
import { get, post, del } from "./api.js";
import { usePoll, ago, duration, Confirm, FormError } from "./ui.jsx";

const REFRESH_MS = 2000;

const COLUMNS = [
  ["hostname", "Machine", (m) => m.hostname],
  ["state", "State", (m) => m.state],
  ["rpo", "RPO", (m) => m.rpo_secs ?? Infinity],
  ["health", "Health", (m) => ({ critical: 0, warning: 1, normal: 2 })[m.health] ?? 3],
  ["seen", "Last contact", (m) => -(m.last_seen_unix_ms || 0)],
  ["backlog", "Backlog", (m) => m.backlog_batches],
  ["churn", "Churn", (m) => m.churn_mb_per_s ?? -1],
  ["policy", "Policy", (m) => m.policy],
];

function stateText(m) {
  if (m.state === "initial-copy" && m.initial_copy != null) return `initial copy ${Math.floor(m.initial_copy * 100)} %`;
  return m.state;
}

export function Machines() {
  const [data, error] = usePoll(() => get("/api/v1/machines").then((v) => (performance.mark("lifeboat:machines-data"), v)), REFRESH_MS);
  // For the benchmark: when the list was first in the page.
  useEffect(() => {
    if (data && !performance.getEntriesByName("lifeboat:machines-shown").length) performance.mark("lifeboat:machines-shown");
  }, [data]);
  const [filter, setFilter] = useState("");
  const [sort, setSort] = useState({ key: "hostname", up: true });
  const machines = data?.machines || [];
  const needle = filter.trim().toLowerCase();
  const shown = machines
    .filter((m) => !needle || [m.hostname, m.id, m.state, m.health, m.policy, ...m.groups].some((t) => t.toLowerCase().includes(needle)))
    .sort((a, b) => {
      const f = COLUMNS.find((c) => c[0] === sort.key)[2];
      const x = f(a);
      const y = f(b);
      const r = x < y ? -1 : x > y ? 1 : 0;
      return sort.up ? r : -r;
    });
  const by = (key) => setSort({ key, up: sort.key === key ? !sort.up : true });
  return (
    <section aria-labelledby="machines-h">
      <div class="bar">
        <h2 id="machines-h">Machines</h2>
        <label class="filter">
          <span>Filter</span>
          <input type="search" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} placeholder="name, state, policy, group" />
        </label>
      </div>
      {error && <p class="error" role="alert">{error.message}</p>}
      {data && machines.length === 0 && (
        <p>No machine is registered yet. Settings → Add machines shows how to register one.</p>
      )}
      {machines.length > 0 && (
        <table class="machines">
          <caption class="sr-only">
            {shown.length} of {machines.length} machines, sorted by {sort.key}
          </caption>
          <thead>
            <tr>
              {COLUMNS.map(([key, label]) => (
                <th scope="col" aria-sort={sort.key === key ? (sort.up ? "ascending" : "descending") : "none"}>
                  <button type="button" class="sort" onClick={() => by(key)}>
                    {label}
                    {sort.key === key ? (sort.up ? " ▲" : " ▼") : ""}
                  </button>
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {shown.map((m) => (
              <tr data-machine={m.id}>
                <th scope="row">
                  <a href={`#/machines/${m.id}`}>{m.hostname}</a>
                  {/* The id's first 8 digits tell machines of one host name apart; the
                      machine's page shows it whole (and the filter matches it whole). */}
                  <div class="id">{m.id.slice(0, 8)}</div>
                </th>
                <td data-label="State">{stateText(m)}</td>
                <td data-label="RPO">{duration(m.rpo_secs)}</td>
                <td data-label="Health">
                  <span class={`health ${m.health}`}>{m.health}</span>
                </td>
                <td data-label="Last contact">{ago(m.last_seen_unix_ms)}</td>
                <td data-label="Backlog">{m.backlog_batches}</td>
                <td data-label="Churn">{m.churn_mb_per_s == null ? "–" : `${m.churn_mb_per_s.toFixed(1)} MB/s`}</td>
                <td data-label="Policy">{m.policy}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function Alerts() {
  const [data, error] = usePoll(() => get("/api/v1/alerts"), REFRESH_MS);
  const alerts = data?.alerts || [];
  return (
    <section aria-labelledby="alerts-h">
      <h2 id="alerts-h">Alerts</h2>
      {error && <p class="error" role="alert">{error.message}</p>}
      {data && alerts.length === 0 && <p class="ok">No alert holds now.</p>}
      <ul class="alerts">
        {alerts.map((a) => (
          <li class={a.severity}>
            <strong>{a.severity}</strong> <span class="kind">{a.kind}</span> {a.message}
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Jobs() {
  const [data, error] = usePoll(() => get("/api/v1/jobs"), REFRESH_MS);
  const jobs = data?.jobs || [];
  return (
    <section aria-labelledby="jobs-h">
      <h2 id="jobs-h">Jobs</h2>
      {error && <p class="error" role="alert">{error.message}</p>}
      {data && jobs.length === 0 && <p>No job has run yet.</p>}
      {jobs.length > 0 && (
        <table>
          <thead>
            <tr>
              <th scope="col">Job</th>
              <th scope="col">Kind</th>
              <th scope="col">Machine</th>
              <th scope="col">State</th>
              <th scope="col">Progress</th>
              <th scope="col">Started</th>
            </tr>
          </thead>
          <tbody>
            {jobs.map((j) => (
              <tr>
                <th scope="row">{j.id}</th>
                <td>{j.kind}</td>
                <td>{j.machine_id || "–"}</td>
                <td>{j.state}</td>
                <td>
                  <progress max="1" value={j.progress} aria-label={`job ${j.id} progress`} /> {j.message}
                </td>
                <td>{ago(j.created_unix_ms)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

// "Test connection": a new instance of the target runs init and its health probe; what
// the plugin said is shown as it said it.
function TestTarget({ name }) {
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState(null);
  const test = async () => {
    setBusy(true);
    setResult(null);
    try {
      setResult(await post(`/api/v1/plugins/${encodeURIComponent(name)}/health`));
    } catch (e) {
      setResult({ ok: false, message: e.message });
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="test-target">
      <button type="button" class="secondary" onClick={test} disabled={busy}>
        Test connection of {name}
      </button>
      {result && (
        <p class={result.ok ? "ok" : "error"} role="status" data-ok={String(result.ok)}>
          {result.ok ? "Working: " : "Not working: "}
          {result.message}
          {result.seconds != null && ` (${result.seconds.toFixed(2)} s)`}
        </p>
      )}
    </div>
  );
}

// The plugins the appliance loaded, with why each is trusted, and the settings each
// declares (a secret's value is never shown); the ones it refused, with the reason.
// A file's bytes as base64, in chunks (String.fromCharCode takes a bounded argument list).
async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// Uploading a plugin: its .wasm and manifest go to quarantine, where they wait for an
// administrator to trust them.
function Upload({ onDone }) {
  const [wasm, setWasm] = useState(null);
  const [manifest, setManifest] = useState(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const upload = async (e) => {
    e.preventDefault();
    if (!wasm || !manifest) {
      setError("choose the plugin's .wasm and its manifest (.toml)");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await post("/api/v1/plugin-uploads", { manifest: await manifest.text(), wasm_base64: await base64Of(wasm) });
      e.target.reset();
      setWasm(null);
      setManifest(null);
      onDone();
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="panel" onSubmit={upload} noValidate aria-labelledby="upload-h">
      <h3 id="upload-h">Upload a plugin</h3>
      <p class="help">It is checked (manifest, sha256, a component of the world it claims) and kept in quarantine, never run, until an administrator trusts it.</p>
      <div class="grid">
        <div class="field">
          <label for="upload-wasm">Plugin (.wasm)</label>
          <input id="upload-wasm" type="file" accept=".wasm,application/wasm" onChange={(e) => setWasm(e.currentTarget.files[0] || null)} />
        </div>
        <div class="field">
          <label for="upload-toml">Manifest (.toml)</label>
          <input id="upload-toml" type="file" accept=".toml" onChange={(e) => setManifest(e.currentTarget.files[0] || null)} />
        </div>
      </div>
      <FormError error={error} />
      <div class="buttons">
        <button type="submit" disabled={busy}>Upload</button>
      </div>
    </form>
  );
}

// An upload in quarantine: what it is and asks for, trusted (pinned) or discarded after a
// confirmation.
function Quarantined({ q, onDone }) {
  const [asking, setAsking] = useState(null);
  const trust = () => post(`/api/v1/plugin-uploads/${encodeURIComponent(q.name)}/trust`, { sha256: q.sha256 });
  const discard = () => del(`/api/v1/plugin-uploads/${encodeURIComponent(q.name)}`);
  return (
    <article class="panel plugin" data-upload={q.name}>
      <h4>
        {q.name} <span class="kind">{q.kind} {q.version}</span> <span class="badge warn">quarantined</span>
      </h4>
      <dl class="facts">
        <div>
          <dt>sha256</dt>
          <dd><code class="fp">{q.sha256}</code></dd>
        </div>
        <div>
          <dt>Signature</dt>
          <dd>{q.signed_by ? `signed by trusted key ${q.signed_by}` : "not signed by a trusted key"}</dd>
        </div>
        <div>
          <dt>Asks for</dt>
          <dd>{q.requests}</dd>
        </div>
        <div>
          <dt>Once trusted</dt>
          <dd data-once={q.once_trusted === "loads" ? "loads" : "refused"}>{q.once_trusted === "loads" ? "it loads with what the configuration grants" : q.once_trusted}</dd>
        </div>
        {q.replaces && (
          <div>
            <dt>Replaces</dt>
            <dd>{q.replaces}</dd>
          </div>
        )}
        <div>
          <dt>Uploaded</dt>
          <dd>{ago(q.uploaded_unix_ms)}</dd>
        </div>
      </dl>
      <div class="buttons">
        <button type="button" onClick={() => setAsking("trust")}>Trust {q.name}…</button>
        <button type="button" class="secondary" onClick={() => setAsking("discard")}>Discard {q.name}…</button>
      </div>
      {asking === "trust" && (
        <Confirm title={`Trust ${q.name}?`} action={`Trust and install ${q.name}`} onConfirm={async () => { await trust(); setAsking(null); onDone(); }} onCancel={() => setAsking(null)} danger>
          <p>
            The build with sha256 <code class="fp">{q.sha256}</code> is pinned and installed in the plugins directory, and the plugins are
            reloaded{q.replaces ? `; it replaces ${q.replaces}` : ""}. Its code then runs in the appliance's sandbox with what the
            configuration file grants it, nothing more. Compare the sha256 with the one its publisher gives.
          </p>
        </Confirm>
      )}
      {asking === "discard" && (
        <Confirm title={`Discard ${q.name}?`} action={`Discard ${q.name}`} onConfirm={async () => { await discard(); setAsking(null); onDone(); }} onCancel={() => setAsking(null)}>
          <p>The upload is deleted from quarantine; nothing installed changes.</p>
        </Confirm>
      )}
    </article>
  );
}

export function Plugins() {
  const [data, error, refresh] = usePoll(() => get("/api/v1/plugins"), 10000);
  const [reloaded, setReloaded] = useState(null);
  const reload = async () => {
    try {
      const list = await post("/api/v1/plugins/reload");
      setReloaded(`Reloaded: ${list.plugins.filter((p) => p.trust !== "refused").length} loaded, ${list.plugins.filter((p) => p.trust === "refused").length} refused.`);
      refresh();
    } catch (e) {
      setReloaded(e.message);
    }
  };
  const plugins = data?.plugins || [];
  const loaded = plugins.filter((p) => p.trust !== "refused");
  const refused = plugins.filter((p) => p.trust === "refused");
  const TRUST = { pinned: "pinned (its sha256 is in the grant)", signed: "signed by a trusted key", unsigned: "unsigned (allowed by allow_unsigned)" };
  return (
    <section aria-labelledby="plugins-h">
      <h2 id="plugins-h">Plugins</h2>
      {error && <p class="error" role="alert">{error.message}</p>}
      {data && loaded.length === 0 && <p>No plugin is loaded.</p>}
      {loaded.map((p) => (
        <article class="panel plugin" data-plugin={p.name}>
          <h3>
            {p.name} <span class="kind">{p.kind} {p.version}</span>
          </h3>
          <p>Trust: {TRUST[p.trust] || p.trust}</p>
          {p.message && <p class="warn" data-unconfigured>{p.message}</p>}
          {p.kind === "target" && <TestTarget name={p.name} />}
          {p.settings.length > 0 && (
            <table class="settings">
              <caption class="sr-only">Settings of {p.name}</caption>
              <thead>
                <tr>
                  <th scope="col">Setting</th>
                  <th scope="col">Value</th>
                </tr>
              </thead>
              <tbody>
                {p.settings.map((s) => (
                  <tr data-setting={s.name}>
                    <th scope="row">
                      {s.label} <code>{s.name}</code>
                      {s.help && <div class="help">{s.help}</div>}
                    </th>
                    <td>{s.value ?? (s.secret ? (s.configured ? "secret, set" : "secret, not set") : s.required ? "not set (required)" : "not set")}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </article>
      ))}
      {refused.length > 0 && (
        <>
          <h3>Refused</h3>
          <ul class="alerts">
            {refused.map((p) => (
              <li class="critical" data-refused={p.name}>{p.message}</li>
            ))}
          </ul>
        </>
      )}
      <h3>Quarantine</h3>
      {data && data.quarantined.length === 0 && <p>No upload is waiting.</p>}
      {data?.quarantined.map((q) => <Quarantined q={q} onDone={refresh} />)}
      <Upload onDone={refresh} />
      <p class="help">What a plugin may reach (directories, hosts, commands) is granted in the appliance's configuration (see docs/plugins.md); the appliance loads the plugins directory again on SIGHUP or here.</p>
      <div class="buttons">
        <button type="button" class="secondary" onClick={reload}>Reload plugins</button>
      </div>
      {reloaded && <p role="status">{reloaded}</p>}
    </section>
  );
}
