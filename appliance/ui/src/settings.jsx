// Settings: the target and its settings (target.jsx), one-time registration passphrases (made here, shown once), the certificate
// authority and its rotation (one confirmed step at a time), and whether the recovery
// passphrase seals the catalogue at the target.
import { useState } from "preact/hooks";
import { TargetForm } from "./target.jsx";
import { get, post } from "./api.js";
import { usePoll, Confirm, ago } from "./ui.jsx";

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

export function Settings() {
  return (
    <section aria-labelledby="settings-h">
      <h2 id="settings-h">Settings</h2>
      <TargetForm />
      <Passphrases />
      <Authority />
      <Recovery />
    </section>
  );
}
