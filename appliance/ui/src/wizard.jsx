// The first-boot setup wizard: claim (setup token + first administrator), identity, the
// target (target.jsx), protection defaults and the recovery passphrase, adding machines, done. The appliance
// records the step reached, so a wizard left half way resumes there; "Back" goes to the
// previous step until the end.
import { useState, useEffect } from "preact/hooks";
import { get, put, post, del, openSession } from "./api.js";
import { Field, FormError, useErrors } from "./ui.jsx";
import { TargetForm } from "./target.jsx";
import { PushInstall } from "./push.jsx";

const STEPS = [
  ["claim", "Claim"],
  ["identity", "Identity"],
  ["target", "Target"],
  ["protection", "Protection"],
  ["machines", "Add machines"],
  ["done", "Done"],
];

function Steps({ current }) {
  const at = STEPS.findIndex(([s]) => s === current);
  return (
    <ol class="steps" aria-label="Setup steps">
      {STEPS.map(([s, label], i) => (
        <li class={i === at ? "now" : i < at ? "past" : ""} aria-current={i === at ? "step" : undefined}>
          {label}
        </li>
      ))}
    </ol>
  );
}

export function Wizard({ step, onStep, onDone }) {
  const go = async (next) => {
    if (next === "done") {
      await put("/api/v1/wizard", { step: "done" });
      onDone();
      return;
    }
    if (step !== "claim") await put("/api/v1/wizard", { step: next });
    onStep(next);
  };
  return (
    <main class="wizard">
      <h1>Set up this appliance</h1>
      <Steps current={step} />
      {step === "claim" && <Claim onNext={() => onStep("identity")} />}
      {step === "identity" && <Identity onNext={() => go("target")} />}
      {step === "target" && <TargetForm saveLabel="Next" onBack={() => go("identity")} onSaved={() => go("protection")} />}
      {step === "protection" && <Protection onBack={() => go("target")} onNext={() => go("machines")} />}
      {step === "machines" && <Machines onBack={() => go("protection")} onNext={() => go("done")} />}
    </main>
  );
}

function Claim({ onNext }) {
  const [token, setToken] = useState("");
  const [name, setName] = useState("admin");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [errors, setErrors, fail] = useErrors(["setup_token", "name", "password"]);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    if (password !== again) {
      setErrors({ again: "the two passwords differ" });
      return;
    }
    setBusy(true);
    try {
      await openSession("/api/v1/setup", { setup_token: token, name, password });
      onNext();
    } catch (err) {
      fail(err, { bad_setup_token: "setup_token" });
    } finally {
      setBusy(false);
    }
  };
  return (
    <form onSubmit={submit} noValidate aria-labelledby="claim-title">
      <h2 id="claim-title">Claim the appliance</h2>
      <p>
        The appliance printed a one-time <strong>setup token</strong> on its console when it started (also shown by{" "}
        <code>lifeboat-appliance setup-token</code>). Only someone who can see it may create the first administrator.
      </p>
      <Field label="Setup token" name="setup_token" value={token} onInput={setToken} error={errors.setup_token} autocomplete="off" help="Five groups of five letters and digits, e.g. ABCDE-FGHJK-MNPQR-STVWX." />
      <Field label="Administrator name" name="name" value={name} onInput={setName} error={errors.name} autocomplete="username" />
      <Field label="Password" name="password" type="password" value={password} onInput={setPassword} error={errors.password} autocomplete="new-password" help="At least 12 characters." />
      <Field label="Password again" name="again" type="password" value={again} onInput={setAgain} error={errors.again} autocomplete="new-password" />
      <FormError error={errors.form} />
      <div class="buttons">
        <button type="submit" disabled={busy}>Claim</button>
      </div>
    </form>
  );
}

// The certificate 443 presents: the appliance CA's, or one from the site's own CA.
function Certificate() {
  const [cert, setCert] = useState(null);
  const [pem, setPem] = useState("");
  const [key, setKey] = useState("");
  const [errors, setErrors, fail] = useErrors(["certificate_pem", "key_pem"]);
  const [done, setDone] = useState(null);
  useEffect(() => {
    get("/api/v1/appliance/certificate").then(setCert).catch((e) => fail(e));
  }, []);
  const upload = async () => {
    try {
      setCert(await put("/api/v1/appliance/certificate", { certificate_pem: pem, key_pem: key }));
      setPem("");
      setKey("");
      setErrors({});
      setDone("In use from the next connection on.");
    } catch (e) {
      fail(e);
    }
  };
  const back = async () => {
    try {
      setCert(await del("/api/v1/appliance/certificate"));
      setDone("The appliance CA's certificate is in use again.");
    } catch (e) {
      fail(e);
    }
  };
  return (
    <section aria-labelledby="cert-title" class="panel">
      <h3 id="cert-title">Certificate for this address</h3>
      {cert && (
        <p data-cert-source={cert.source}>
          {cert.source === "uploaded" ? "Uploaded" : "Issued by the appliance's CA"} for {cert.names.join(", ") || "no name"}, until{" "}
          {new Date(cert.not_after_unix_ms).toLocaleDateString()}. Browsers trust it once they trust its CA; agents and the CLI are always given the appliance CA's certificate, which they pin.
        </p>
      )}
      {done && <p class="ok" role="status">{done}</p>}
      <details>
        <summary>Use a certificate from your own CA</summary>
        <Field label="Certificate chain (PEM, leaf first)" name="certificate_pem" type="textarea" value={pem} onInput={setPem} error={errors.certificate_pem} />
        <Field label="Its private key (PEM)" name="key_pem" type="textarea" value={key} onInput={setKey} error={errors.key_pem} help="Kept readable by the appliance only; never shown again." />
        <div class="buttons">
          <button type="button" class="secondary" onClick={upload}>Use this certificate</button>
          {cert?.source === "uploaded" && <button type="button" class="secondary" onClick={back}>Use the appliance CA's again</button>}
        </div>
      </details>
      <FormError error={errors.form} />
    </section>
  );
}

function Identity({ onNext }) {
  const [info, setInfo] = useState(null);
  const [name, setName] = useState("");
  const [url, setUrl] = useState("");
  const [errors, , fail] = useErrors(["name", "agent_url"]);
  const [skew, setSkew] = useState(null);
  useEffect(() => {
    const t0 = Date.now();
    get("/api/v1/appliance")
      .then((a) => {
        const t1 = Date.now();
        setInfo(a);
        setName(a.name);
        setUrl(a.agent_url);
        setSkew(a.server_unix_ms - (t0 + t1) / 2);
      })
      .catch((e) => fail(e));
  }, []);
  const submit = async (e) => {
    e.preventDefault();
    try {
      await put("/api/v1/appliance", { name, agent_url: url });
      await onNext();
    } catch (err) {
      fail(err);
    }
  };
  const skewS = skew == null ? null : Math.abs(skew) / 1000;
  return (
    <form onSubmit={submit} noValidate aria-labelledby="identity-title">
      <h2 id="identity-title">Identity</h2>
      <Field label="Appliance name" name="name" value={name} onInput={setName} error={errors.name} help="How this appliance is shown here and in alerts." />
      <Field label="Address agents send to" name="agent_url" value={url} onInput={setUrl} error={errors.agent_url} help="The process server's address as protected machines reach it: https://host:port (port 9443 by default). Given to each agent when it registers." />
      <section aria-labelledby="clock-title" class="panel">
        <h3 id="clock-title">Clock</h3>
        {skewS == null ? (
          <p>Checking…</p>
        ) : skewS < 60 ? (
          <p class="ok">The appliance's clock and this browser's agree (within {skewS.toFixed(1)} s).</p>
        ) : (
          <p class="warn" role="alert">
            The appliance's clock is {Math.round(skewS)} s away from this browser's. Certificates are refused when clocks disagree: set the appliance's time (NTP) before registering agents.
          </p>
        )}
        {info && (
          <p>
            Agents pin the appliance's certificate authority by its fingerprint: <code class="fp">{info.ca_fingerprint}</code>
          </p>
        )}
      </section>
      <Certificate />
      <FormError error={errors.form} />
      <div class="buttons">
        <button type="submit">Next</button>
      </div>
    </form>
  );
}

// A passphrase for the catalogue: 24 letters and digits from the browser's CSPRNG, in
// groups of four (about 124 bits).
function newPassphrase() {
  const alphabet = "ABCDEFGHJKMNPQRSTVWXYZ23456789";
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  const chars = [...bytes].map((b) => alphabet[b % alphabet.length]);
  return chars.join("").match(/.{4}/g).join("-");
}

const POLICY_FIELDS = ["crash_interval_secs", "app_interval_secs", "rpo_warning_secs", "rpo_critical_secs", "compression_level", "encryption", "typed"];

function Protection({ onBack, onNext }) {
  const [policy, setPolicy] = useState(null);
  const [form, setForm] = useState({ crash: "", app: "", warn: "", crit: "", level: "", encryption: true });
  const [passphrase] = useState(newPassphrase);
  const [typed, setTyped] = useState("");
  const [already, setAlready] = useState(false);
  const [errors, setErrors, fail] = useErrors(POLICY_FIELDS);
  useEffect(() => {
    Promise.all([get("/api/v1/policies"), get("/api/v1/recovery-passphrase")])
      .then(([list, rec]) => {
        const p = list.policies.find((x) => x.name === "default")?.policy || {};
        setPolicy(p);
        setForm({
          crash: String(p.crash_interval_secs ?? 60),
          app: String(p.app_interval_secs ?? 3600),
          warn: String(p.rpo_warning_secs ?? 900),
          crit: String(p.rpo_critical_secs ?? 1800),
          level: String(p.compression_level ?? 3),
          encryption: p.encryption ?? true,
        });
        setAlready(rec.set);
      })
      .catch((e) => fail(e));
  }, []);
  const set = (k) => (v) => setForm({ ...form, [k]: v });
  const submit = async (e) => {
    e.preventDefault();
    // Whole numbers first (the server checks the ranges and names the field).
    const numbers = {};
    const bad = {};
    for (const [key, field] of [["crash", "crash_interval_secs"], ["app", "app_interval_secs"], ["warn", "rpo_warning_secs"], ["crit", "rpo_critical_secs"], ["level", "compression_level"]]) {
      if (/^-?\d+$/.test(form[key].trim())) numbers[field] = Number(form[key]);
      else bad[field] = "a whole number";
    }
    if (!already && typed.trim() !== passphrase) bad.typed = "type the recovery passphrase exactly as shown above";
    if (Object.keys(bad).length) {
      setErrors(bad);
      return;
    }
    const body = { ...policy, ...numbers, encryption: form.encryption };
    try {
      await put("/api/v1/policies/default", body);
    } catch (err) {
      return fail(err);
    }
    try {
      if (!already) await put("/api/v1/recovery-passphrase", { passphrase });
      await onNext();
    } catch (err) {
      fail(err, { invalid: "typed" });
    }
  };
  return (
    <form onSubmit={submit} noValidate aria-labelledby="protection-title">
      <h2 id="protection-title">Protection defaults</h2>
      <p>The default policy applies to every machine that is not given another one.</p>
      <div class="grid">
        <Field label="Crash-consistent point every (s)" name="crash_interval_secs" inputMode="numeric" value={form.crash} onInput={set("crash")} error={errors.crash_interval_secs} />
        <Field label="App-consistent point every (s)" name="app_interval_secs" inputMode="numeric" value={form.app} onInput={set("app")} error={errors.app_interval_secs} help="0: at every cut. Only for machines with quiescers." />
        <Field label="RPO warning after (s)" name="rpo_warning_secs" inputMode="numeric" value={form.warn} onInput={set("warn")} error={errors.rpo_warning_secs} />
        <Field label="RPO critical after (s)" name="rpo_critical_secs" inputMode="numeric" value={form.crit} onInput={set("crit")} error={errors.rpo_critical_secs} />
        <Field label="Compression level (zstd, -7 to 22)" name="compression_level" inputMode="numeric" value={form.level} onInput={set("level")} error={errors.compression_level} />
        <Field label="Encrypt data on its way to and at the target" name="encryption" type="checkbox" value={form.encryption} onInput={set("encryption")} error={errors.encryption} />
      </div>
      <section aria-labelledby="recovery-title" class="panel">
        <h3 id="recovery-title">Recovery passphrase</h3>
        {already ? (
          <p class="ok">A recovery passphrase is set already; the catalogue at the target is sealed under it.</p>
        ) : (
          <>
            <p>
              The appliance keeps a catalogue of machines, points and keys at the target, sealed under this passphrase. If this
              appliance is lost, a new one at the target site opens the catalogue with it and fails your machines over.{" "}
              <strong>It is shown only now: write it down and keep it away from this appliance.</strong>
            </p>
            <p class="secret">
              Recovery passphrase: <code data-testid="recovery-passphrase">{passphrase}</code>
            </p>
            <Field label="Type the recovery passphrase again" name="typed" value={typed} onInput={setTyped} error={errors.typed} autocomplete="off" />
          </>
        )}
      </section>
      <FormError error={errors.form} />
      <div class="buttons">
        <button type="button" class="secondary" onClick={onBack}>Back</button>
        <button type="submit">Next</button>
      </div>
    </form>
  );
}

/** The install command with the passphrase given to the installer after `sudo` (a
 * passphrase is base-32 letters, digits and dashes: nothing to quote). */
function withPassphrase(command, passphrase) {
  return command.replace(" sudo ", ` sudo LIFEBOAT_PASSPHRASE='${passphrase}' `);
}

function Machines({ onBack, onNext }) {
  const [info, setInfo] = useState(null);
  const [pass, setPass] = useState(null);
  const [downloads, setDownloads] = useState(null);
  const [errors, , fail] = useErrors([]);
  const origin = window.location.origin;
  useEffect(() => {
    get("/api/v1/appliance").then(setInfo).catch((e) => fail(e));
    get(`/api/v1/downloads?origin=${encodeURIComponent(origin)}`).then(setDownloads).catch((e) => fail(e));
  }, []);
  const rotate = async () => {
    try {
      setPass(await post("/api/v1/passphrases"));
    } catch (e) {
      fail(e);
    }
  };
  return (
    <section aria-labelledby="machines-title">
      <h2 id="machines-title">Add machines</h2>
      <p>
        A machine is protected by the Lifeboat agent, installed on it. It registers once with a one-time registration
        passphrase (valid 24 hours) and pins this appliance's certificate authority by its fingerprint.
      </p>
      <div class="panel">
        <p>
          CA fingerprint: <code class="fp">{info?.ca_fingerprint || "…"}</code>
        </p>
        {pass ? (
          <>
            <p>
              Registration passphrase (shown once): <code class="secret" data-testid="registration-passphrase">{pass.passphrase}</code>
              {pass.dropped > 0 && <span> — {pass.dropped} unused passphrase(s) stopped working.</span>}
            </p>
            {downloads?.install_command && (
              <>
                <p>On a Debian or Ubuntu machine, as a user who may sudo: installs the agent's package, registers it and starts it.</p>
                <pre data-testid="install-command">{withPassphrase(downloads.install_command, pass.passphrase)}</pre>
              </>
            )}
            <p>{downloads?.install_command ? "Or, with the agent's binary installed by hand, as root:" : "On the machine, as root, with the agent's binary installed:"}</p>
            <pre data-testid="register-command">
              {`lifeboat-agent register --appliance ${origin} \\\n  --fingerprint ${info?.ca_fingerprint || ""} \\\n  --passphrase ${pass.passphrase}\nlifeboat-agent run --config /etc/lifeboat/agent.toml`}
            </pre>
          </>
        ) : (
          <p>Make a registration passphrase to see the commands that install and register the agent on a machine.</p>
        )}
        {downloads?.enabled && (
          <details>
            <summary>Packages this appliance serves</summary>
            <ul class="downloads">
              {downloads.files.map((f) => (
                <li key={f.name}>
                  <a href={`/downloads/${f.name}`}>{f.name}</a> ({Math.round(f.size / 1024)} KiB) <code class="fp">SHA-256 {f.sha256}</code>
                </li>
              ))}
            </ul>
            <p>
              The command checks the installer's SHA-256 before running it; the installer checks the package's, and the
              agent trusts only the CA with the fingerprint above.
            </p>
          </details>
        )}
        <button type="button" onClick={rotate}>{pass ? "Make another passphrase" : "Make a registration passphrase"}</button>
      </div>
      <PushInstall />
      <FormError error={errors.form} />
      <div class="buttons">
        <button type="button" class="secondary" onClick={onBack}>Back</button>
        <button type="button" onClick={onNext}>Finish</button>
      </div>
    </section>
  );
}
