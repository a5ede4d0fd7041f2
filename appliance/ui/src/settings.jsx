// Settings: the target and its settings (target.jsx), one-time registration passphrases
// (made here, shown once), the certificate authority and its rotation (one confirmed step
// at a time), whether the recovery passphrase seals the catalogue at the target, the
// administrators (added, passwords set, removed) and the live sessions (ended).
import { useState } from "preact/hooks";
import { TargetForm } from "./target.jsx";
import { get, post, put, del } from "./api.js";
import { usePoll, Confirm, ago, when, Field, FormError, useErrors } from "./ui.jsx";
import { PushInstall } from "./push.jsx";

const ROTATION = {
  steady: [
    "Introduce a new CA",
    "A new certificate authority is made and trusted alongside the active one. Agents learn it at their next check; nothing else changes yet.",
  ],
  introducing: [
    "Sign with the new CA",
    "The new CA becomes the active one: it signs from now on, and agents renew their certificates under it. The old CA is still trusted until the last step.",
  ],
  retiring: [
    "Drop the old CA",
    "The old CA stops being trusted. A machine that has not renewed its certificate yet would be refused: the appliance answers 409 while any is left.",
  ],
};

function Passphrases() {
  const [status, error] = usePoll(() => get("/api/v1/passphrases"), 5000);
  const [asking, setAsking] = useState(false);
  const [made, setMade] = useState(null);
  return (
    <section class="panel" aria-labelledby="pp-h">
      <h3 id="pp-h">Registration passphrases</h3>
      {error && <p class="error" role="alert">{error.message}</p>}
      {status && <p data-unused={status.unused}>{status.unused} unused one-time {status.unused === 1 ? "passphrase" : "passphrases"}. An agent registers with one (lifeboat-agent register --passphrase …).</p>}
      {made && (
        <p class="secret" role="status">
          New passphrase, shown once: <code data-testid="new-passphrase">{made.passphrase}</code> ({made.dropped} unused ones stopped working)
        </p>
      )}
      <div class="buttons">
        <button type="button" onClick={() => setAsking(true)}>
          Make a new registration passphrase…
        </button>
      </div>
      {asking && (
        <Confirm
          title="Make a new registration passphrase"
          action="Make it"
          onConfirm={async () => {
            setMade(await post("/api/v1/passphrases"));
            setAsking(false);
          }}
          onCancel={() => setAsking(false)}
        >
          <p>A new one-time passphrase is made and shown once. Every unused one stops working, so one that leaked cannot register a machine.</p>
        </Confirm>
      )}
    </section>
  );
}

function Authority() {
  const [ca, error] = usePoll(() => get("/api/v1/ca"), 5000);
  const [asking, setAsking] = useState(false);
  if (error) return <p class="error" role="alert">{error.message}</p>;
  if (!ca) return null;
  const [action, text] = ROTATION[ca.phase] || ["Next step", ""];
  const active = ca.machines.filter((m) => m.on_active_ca && !m.revoked).length;
  const others = ca.machines.filter((m) => !m.on_active_ca && !m.revoked).length;
  return (
    <section class="panel" aria-labelledby="ca-h">
      <h3 id="ca-h">Certificate authority</h3>
      <dl class="facts">
        <div>
          <dt>Rotation phase</dt>
          <dd data-phase={ca.phase}>{ca.phase}</dd>
        </div>
        <div>
          <dt>Machines on the active CA</dt>
          <dd>
            {active} ({others} not yet)
          </dd>
        </div>
      </dl>
      <p>
        Active CA: <code class="fp">{ca.active}</code>
      </p>
      {ca.next && (
        <p>
          Being introduced: <code class="fp">{ca.next}</code>
        </p>
      )}
      {ca.retiring.map((r) => (
        <p>
          Retiring: <code class="fp">{r}</code>
        </p>
      ))}
      <div class="buttons">
        <button type="button" class="secondary" onClick={() => setAsking(true)}>
          {action}…
        </button>
      </div>
      {asking && (
        <Confirm
          title={action}
          action={action}
          onConfirm={async () => {
            await post("/api/v1/ca/rotate", { force: false });
            setAsking(false);
          }}
          onCancel={() => setAsking(false)}
        >
          <p>{text}</p>
        </Confirm>
      )}
    </section>
  );
}

function Recovery() {
  const [r, error] = usePoll(() => get("/api/v1/recovery-passphrase"), 10000);
  if (error) return <p class="error" role="alert">{error.message}</p>;
  if (!r) return null;
  return (
    <section class="panel" aria-labelledby="rp-h">
      <h3 id="rp-h">Recovery passphrase</h3>
      <p data-recovery={String(r.set)}>
        {r.set
          ? `Set: the catalogue at the target is sealed under it${r.catalogue_written_unix_ms ? `, last written ${ago(r.catalogue_written_unix_ms)}` : ""}. A fresh appliance at the target site can fail machines over with it (lifeboat-appliance recover).`
          : "Not set: without it, machines can be failed over only by this appliance. Set it with the setup wizard's protection step or `lifeboat recovery-passphrase set`."}
      </p>
    </section>
  );
}

function Administrators({ me }) {
  const [list, error, refresh] = usePoll(() => get("/api/v1/admins"), 10000);
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [errors, setErrors, fail] = useErrors(["name", "password"]);
  const [asking, setAsking] = useState(null);
  const [newPassword, setNewPassword] = useState("");
  const [done, setDone] = useState(null);
  const add = async (e) => {
    e.preventDefault();
    if (password !== again) return setErrors({ again: "the two passwords differ" });
    try {
      await post("/api/v1/admins", { name, password });
      setDone(`Administrator ${name} added.`);
      setName("");
      setPassword("");
      setAgain("");
      setErrors({});
      refresh();
    } catch (err) {
      fail(err);
    }
  };
  return (
    <section class="panel" aria-labelledby="admins-h">
      <h3 id="admins-h">Administrators</h3>
      {error && <p class="error" role="alert">{error.message}</p>}
      <table class="list">
        <caption class="sr-only">Administrators</caption>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Since</th>
            <th scope="col">Sessions</th>
            <th scope="col"><span class="sr-only">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          {(list?.admins || []).map((a) => (
            <tr data-admin={a.name}>
              <th scope="row">{a.name}{a.name === me ? " (you)" : ""}</th>
              <td>{when(a.created_unix_ms)}</td>
              <td>{a.sessions}</td>
              <td>
                <button type="button" class="secondary" onClick={() => { setNewPassword(""); setAsking({ what: "password", name: a.name }); }}>Set password of {a.name}…</button>
                {a.name !== me && <button type="button" class="secondary" onClick={() => setAsking({ what: "remove", name: a.name })}>Remove {a.name}…</button>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {done && <p class="ok" role="status">{done}</p>}
      <form onSubmit={add} noValidate aria-labelledby="add-admin-h">
        <h4 id="add-admin-h">Add an administrator</h4>
        <div class="grid">
          <Field label="New administrator's name" name="name" value={name} onInput={setName} error={errors.name} autocomplete="off" />
          <Field label="Their password" name="password" type="password" value={password} onInput={setPassword} error={errors.password} autocomplete="new-password" help="At least 12 characters." />
          <Field label="Their password again" name="again" type="password" value={again} onInput={setAgain} error={errors.again} autocomplete="new-password" />
        </div>
        <FormError error={errors.form} />
        <div class="buttons">
          <button type="submit">Add administrator</button>
        </div>
      </form>
      {asking?.what === "password" && (
        <Confirm title={`New password for ${asking.name}`} action="Set the password" onCancel={() => setAsking(null)} onConfirm={async () => { await put(`/api/v1/admins/${encodeURIComponent(asking.name)}/password`, { password: newPassword }); setDone(`Password of ${asking.name} set; their other sessions ended.`); setAsking(null); refresh(); }}>
          <p>Their other sessions end{asking.name === me ? " (this one stays)" : ""}.</p>
          <Field label="New password" name="new_password" type="password" value={newPassword} onInput={setNewPassword} autocomplete="new-password" help="At least 12 characters." />
        </Confirm>
      )}
      {asking?.what === "remove" && (
        <Confirm title={`Remove ${asking.name}?`} action={`Remove ${asking.name}`} danger onCancel={() => setAsking(null)} onConfirm={async () => { await del(`/api/v1/admins/${encodeURIComponent(asking.name)}`); setDone(`Administrator ${asking.name} removed.`); setAsking(null); refresh(); }}>
          <p>The account is deleted and its sessions end at once.</p>
        </Confirm>
      )}
    </section>
  );
}

function Sessions() {
  const [list, error, refresh] = usePoll(() => get("/api/v1/sessions"), 10000);
  const [ending, setEnding] = useState(null);
  return (
    <section class="panel" aria-labelledby="sessions-h">
      <h3 id="sessions-h">Sessions</h3>
      {error && <p class="error" role="alert">{error.message}</p>}
      <table class="list">
        <caption class="sr-only">Live administrator sessions</caption>
        <thead>
          <tr>
            <th scope="col">Administrator</th>
            <th scope="col">Began</th>
            <th scope="col">Ends</th>
            <th scope="col"><span class="sr-only">Actions</span></th>
          </tr>
        </thead>
        <tbody>
          {(list?.sessions || []).map((s) => (
            <tr data-session={s.id} data-current={String(s.current)}>
              <th scope="row">{s.admin}</th>
              <td>{s.created_unix_ms ? when(s.created_unix_ms) : "–"}</td>
              <td>{when(s.expires_unix_ms)}</td>
              <td>{s.current ? "this session" : <button type="button" class="secondary" onClick={() => setEnding(s)}>End session {s.id.slice(0, 6)}…</button>}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {ending && (
        <Confirm title={`End ${ending.admin}'s session?`} action="End the session" danger onCancel={() => setEnding(null)} onConfirm={async () => { await del(`/api/v1/sessions/${ending.id}`); setEnding(null); refresh(); }}>
          <p>Whoever uses it is logged out at their next request.</p>
        </Confirm>
      )}
    </section>
  );
}

export function Settings() {
  const [me] = usePoll(() => get("/api/v1/session"), 60000);
  return (
    <section aria-labelledby="settings-h">
      <h2 id="settings-h">Settings</h2>
      <TargetForm Heading="h3" />
      <Passphrases />
      <PushInstall />
      <Authority />
      <Recovery />
      <Administrators me={me?.name} />
      <Sessions />
    </section>
  );
}
