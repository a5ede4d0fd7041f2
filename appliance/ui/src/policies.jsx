// Policies: every protection policy (`default` always), the machines that use each, edited
// in place (intervals, RPO thresholds, silence, retention tiers, compression, encryption),
// a new one made by name, an unused one deleted after a confirmation. The server checks
// every value and its error names the field, shown beside it.
import { useState } from "preact/hooks";
import { get, put, del } from "./api.js";
import { usePoll, Field, FormError, Confirm, useErrors, duration } from "./ui.jsx";

const NUMBERS = [
  ["crash_interval_secs", "Crash-consistent point every (s)", "Empty: the agent's own interval."],
  ["app_interval_secs", "App-consistent point every (s)", "0: at every cut; empty: the agent's own. Only for machines with quiescers."],
  ["rpo_warning_secs", "RPO warning after (s)", null],
  ["rpo_critical_secs", "RPO critical after (s)", null],
  ["silent_secs", "Agent silent alert after (s)", null],
  ["compression_level", "Compression level (zstd, -7 to 22)", "Empty: the process server's own level."],
];

function formOf(p) {
  const f = { encryption: p.encryption ?? true, retention: (p.retention || []).map((t) => ({ every: String(t.every_secs), for: String(t.for_secs) })) };
  for (const [k] of NUMBERS) f[k] = p[k] == null ? "" : String(p[k]);
  return f;
}

function PolicyForm({ name, policy, isNew, onDone, onCancel }) {
  // A new policy starts from the built-in defaults of the alerts.
  const [form, setForm] = useState(() => formOf(policy || { rpo_warning_secs: 900, rpo_critical_secs: 1800, silent_secs: 900 }));
  const [newName, setNewName] = useState("");
  const fields = ["name", ...NUMBERS.map(([k]) => k), "encryption", "retention", ...form.retention.flatMap((_, i) => [`retention[${i}].every_secs`, `retention[${i}].for_secs`])];
  const [errors, setErrors, fail] = useErrors(fields);
  const set = (k) => (v) => setForm({ ...form, [k]: v });
  const setTier = (i, k) => (v) => setForm({ ...form, retention: form.retention.map((t, j) => (j === i ? { ...t, [k]: v } : t)) });
  const submit = async (e) => {
    e.preventDefault();
    const bad = {};
    const body = { ...(policy || {}), encryption: form.encryption };
    for (const [k] of NUMBERS) {
      const v = form[k].trim();
      if (v === "") delete body[k];
      else if (/^-?\d+$/.test(v)) body[k] = Number(v);
      else bad[k] = "a whole number";
    }
    const tiers = [];
    form.retention.forEach((t, i) => {
      for (const [k, f] of [["every", "every_secs"], ["for", "for_secs"]]) if (!/^\d+$/.test(t[k].trim())) bad[`retention[${i}].${f}`] = "a whole number of seconds";
      tiers.push({ every_secs: Number(t.every), for_secs: Number(t.for) });
    });
    if (tiers.length) body.retention = tiers;
    else delete body.retention;
    const target = isNew ? newName.trim() : name;
    if (isNew && !target) bad.name = "a name";
    if (Object.keys(bad).length) return setErrors(bad);
    try {
      await put(`/api/v1/policies/${encodeURIComponent(target)}`, body);
      onDone(target);
    } catch (err) {
      fail(err);
    }
  };
  return (
    <form class="panel" onSubmit={submit} noValidate aria-labelledby="policy-form-h">
      <h3 id="policy-form-h">{isNew ? "New policy" : `Policy ${name}`}</h3>
      {isNew && <Field label="Name" name="name" value={newName} onInput={setNewName} error={errors.name} help="1 to 64 letters, digits, '.', '_' or '-'. A machine is given it on its own page." />}
      <div class="grid">
        {NUMBERS.map(([k, label, help]) => (
          <Field label={label} name={k} inputMode="numeric" value={form[k]} onInput={set(k)} error={errors[k]} help={help || undefined} />
        ))}
        <Field label="Encrypt data on its way to and at the target" name="encryption" type="checkbox" value={form.encryption} onInput={set("encryption")} error={errors.encryption} />
      </div>
      <fieldset class="nic">
        <legend>Retention tiers, youngest first</legend>
        <p class="help">Of the points younger than a tier's age, one per interval is kept (0: every point): a group point first, then an app-consistent one. Older than the last tier: deleted; the newest point is always kept. No tier: the appliance's own retention.</p>
        {form.retention.map((t, i) => (
          <div class="grid tier" data-tier={i}>
            <Field label={`Tier ${i + 1}: keep one point per (s)`} name={`retention[${i}].every_secs`} inputMode="numeric" value={t.every} onInput={setTier(i, "every")} error={errors[`retention[${i}].every_secs`]} />
            <Field label={`Tier ${i + 1}: up to an age of (s)`} name={`retention[${i}].for_secs`} inputMode="numeric" value={t.for} onInput={setTier(i, "for")} error={errors[`retention[${i}].for_secs`]} />
            <div class="buttons">
              <button type="button" class="secondary" onClick={() => setForm({ ...form, retention: form.retention.filter((_, j) => j !== i) })}>Remove tier {i + 1}</button>
            </div>
          </div>
        ))}
        {errors.retention && <p class="error" role="alert">{errors.retention}</p>}
        <button type="button" class="secondary" onClick={() => setForm({ ...form, retention: [...form.retention, { every: "", for: "" }] })}>Add a tier</button>
      </fieldset>
      {policy?.bandwidth && <p class="help">Its bandwidth schedule is kept as set through the API.</p>}
      <FormError error={errors.form} />
      <div class="buttons">
        <button type="button" class="secondary" onClick={onCancel}>Cancel</button>
        <button type="submit">Save policy</button>
      </div>
    </form>
  );
}

const every = (v) => (v == null ? "as the agent sets" : `every ${duration(v)}`);

export function Policies() {
  const [data, error, refresh] = usePoll(() => get("/api/v1/policies"), 10000);
  const [editing, setEditing] = useState(null);
  const [deleting, setDeleting] = useState(null);
  const [saved, setSaved] = useState(null);
  const done = (name) => {
    setEditing(null);
    setSaved(name);
    refresh();
  };
  const list = data?.policies || [];
  const current = list.find((p) => p.name === editing);
  return (
    <section aria-labelledby="policies-h">
      <h2 id="policies-h">Policies</h2>
      {error && <p class="error" role="alert">{error.message}</p>}
      <table class="list">
        <caption class="sr-only">Protection policies</caption>
        <thead>
          <tr>
            <th scope="col">Policy</th>
            <th scope="col">Points</th>
            <th scope="col">RPO alerts</th>
            <th scope="col">Retention</th>
            <th scope="col">Compression, encryption</th>
            <th scope="col">Machines</th>
            <th scope="col"><span class="sr-only">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          {list.map(({ name, policy: p, machines }) => (
            <tr data-policy={name}>
              <th scope="row">{name}</th>
              <td>crash {every(p.crash_interval_secs)}, app {every(p.app_interval_secs)}</td>
              <td>warning {duration(p.rpo_warning_secs)}, critical {duration(p.rpo_critical_secs)}</td>
              <td>{p.retention?.length ? p.retention.map((t) => `${t.every_secs ? `1 per ${duration(t.every_secs)}` : "all"} to ${duration(t.for_secs)}`).join(", ") : "the appliance's"}</td>
              <td>{p.compression_level == null ? "the process server's level" : `level ${p.compression_level}`}, {p.encryption === false ? "not encrypted" : "encrypted"}</td>
              <td>{machines.length}</td>
              <td>
                <button type="button" class="secondary" onClick={() => { setSaved(null); setEditing(name); }}>Edit {name}</button>
                {name !== "default" && machines.length === 0 && (
                  <button type="button" class="secondary" onClick={() => setDeleting(name)}>Delete {name}…</button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {saved && !editing && <p class="ok" role="status">Policy {saved} saved; agents take it at their next check.</p>}
      {editing === "" && <PolicyForm isNew onDone={done} onCancel={() => setEditing(null)} />}
      {current && <PolicyForm name={current.name} policy={current.policy} onDone={done} onCancel={() => setEditing(null)} />}
      {editing === null && (
        <div class="buttons">
          <button type="button" onClick={() => { setSaved(null); setEditing(""); }}>New policy</button>
        </div>
      )}
      {deleting && (
        <Confirm title={`Delete policy ${deleting}?`} action={`Delete ${deleting}`} danger onCancel={() => setDeleting(null)} onConfirm={async () => { await del(`/api/v1/policies/${encodeURIComponent(deleting)}`); setDeleting(null); refresh(); }}>
          <p>No machine uses it; it is deleted.</p>
        </Confirm>
      )}
    </section>
  );
}
