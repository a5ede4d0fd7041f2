// Push install: the appliance logs in to a machine over SSH and installs, registers and
// starts the agent (POST /api/v1/machines/install, followed as a job). The host key is never
// trusted on first use: the first attempt names the key the machine presents, and the
// administrator confirms it (checked on the machine with ssh-keygen -lf) before anything is
// sent.
import { useState } from "preact/hooks";
import { post } from "./api.js";
import { Field, FormError, useErrors, JobProgress, Select } from "./ui.jsx";

const FIELDS = ["host", "port", "user", "password", "private_key", "host_key", "disks"];

export function PushInstall({ Heading = "h3" }) {
  const [f, setF] = useState({ host: "", port: "22", user: "root", auth: "password", password: "", key: "", hostKey: "", disks: "", keep: false });
  const [errors, setErrors, fail] = useErrors(FIELDS);
  const [job, setJob] = useState(null);
  const [presented, setPresented] = useState(null);
  const [done, setDone] = useState(null);
  const set = (k) => (v) => setF({ ...f, [k]: v });

  const start = async (hostKey) => {
    const errs = {};
    if (!f.host.trim()) errs.host = "the machine's host name or address";
    if (!/^\d+$/.test(f.port) || +f.port < 1 || +f.port > 65535) errs.port = "a port, 1 to 65535";
    if (!f.user.trim()) errs.user = "root, or a user who may sudo";
    if (f.auth === "password" && !f.password) errs.password = "the user's password (also given to sudo)";
    if (f.auth === "key" && !f.key.trim()) errs.private_key = "the text of an OpenSSH private key file";
    const disks = f.disks.split(/[\s,]+/).filter(Boolean);
    if (disks.some((d) => !d.startsWith("/"))) errs.disks = "absolute paths, e.g. /dev/sda /dev/sdb";
    const key = hostKey || f.hostKey.trim();
    if (key && !/^SHA256:[A-Za-z0-9+/]{43}$/.test(key)) errs.host_key = "SHA256: and 43 characters, as ssh-keygen -lf prints it";
    setErrors(errs);
    if (Object.keys(errs).length) return;
    setPresented(null);
    setDone(null);
    const body = {
      host: f.host.trim(),
      port: +f.port,
      user: f.user.trim(),
      disks,
      keep_credentials: f.keep,
      appliance_url: window.location.origin,
      host_key: key || null,
    };
    if (f.auth === "password") body.password = f.password;
    else body.private_key = f.key;
    try {
      const j = await post("/api/v1/machines/install", body);
      setJob(j.id);
    } catch (e) {
      fail(e);
    }
  };

  const ended = (j) => {
    setJob(null);
    if (j.state === "succeeded") {
      setDone(j.result);
      setF({ ...f, password: "", key: "" });
    } else if (j.message.startsWith("host_key_unconfirmed") && j.result?.host_key) {
      setPresented(j.result.host_key);
    } else {
      setErrors({ form: j.message });
    }
  };

  return (
    <section class="panel" aria-labelledby="push-h">
      <Heading id="push-h">Install over SSH</Heading>
      <p>The appliance logs in to the machine, checks it, copies the agent's package, installs and registers it with a fresh passphrase and starts it. Debian and Ubuntu with systemd, x86_64.</p>
      <form
        noValidate
        onSubmit={(e) => {
          e.preventDefault();
          start();
        }}
      >
        <Field label="Host" name="host" value={f.host} onInput={set("host")} error={errors.host} help="Host name or address the appliance reaches the machine's SSH server at." />
        <Field label="SSH port" name="port" value={f.port} onInput={set("port")} error={errors.port} inputMode="numeric" />
        <Field label="User" name="user" value={f.user} onInput={set("user")} error={errors.user} autocomplete="off" help="root, or a user who may sudo." />
        <Select label="Log in with" name="auth" value={f.auth} onInput={set("auth")} options={[["password", "Password"], ["key", "Private key"]]} />
        {f.auth === "password" ? (
          <Field label="Password" name="password" type="password" value={f.password} onInput={set("password")} error={errors.password} autocomplete="off" />
        ) : (
          <Field label="Private key" name="private_key" type="textarea" value={f.key} onInput={set("key")} error={errors.private_key} help="The text of an OpenSSH private key file (without a passphrase)." />
        )}
        <Field label="Host key fingerprint (optional)" name="host_key" value={f.hostKey} onInput={set("hostKey")} error={errors.host_key} help="SHA256:… as ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub prints it on the machine. Left empty, the appliance shows the key the machine presents for you to confirm." />
        <Field label="Disks (optional)" name="disks" value={f.disks} onInput={set("disks")} error={errors.disks} help="Spaces between, e.g. /dev/sda /dev/sdb. Empty: every whole disk." />
        <Field label="Keep the credentials for later installs to this host (sealed on the appliance)" name="keep" type="checkbox" value={f.keep} onInput={set("keep")} />
        <FormError error={errors.form} />
        <div class="buttons">
          <button type="submit" disabled={job !== null}>Install the agent</button>
        </div>
      </form>
      {presented && (
        <div class="panel" role="alertdialog" aria-labelledby="hostkey-h">
          <h4 id="hostkey-h">Confirm the machine's host key</h4>
          <p>
            {f.host} presents the host key <code class="fp" data-testid="presented-host-key">{presented}</code>. Check it on the machine (<code>ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub</code>): a different key means another machine, or someone in between. Nothing was sent.
          </p>
          <div class="buttons">
            <button type="button" class="secondary" onClick={() => setPresented(null)}>Cancel</button>
            <button
              type="button"
              onClick={() => {
                setF({ ...f, hostKey: presented });
                start(presented);
              }}
            >
              It is the machine's key: install
            </button>
          </div>
        </div>
      )}
      {job !== null && <JobProgress id={job} onEnd={ended} />}
      {done && (
        <div role="status" data-testid="push-done">
          <p>
            Installed on {done.os || f.host}: machine <code>{done.machine_id}</code>, {done.running ? "running" : "starts at the machine's next boot"}.
          </p>
          <ol class="steps">
            {done.steps.map((s) => (
              <li key={s}>{s}</li>
            ))}
          </ol>
        </div>
      )}
    </section>
  );
}
