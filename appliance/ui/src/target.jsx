// The target: choose one of the installed target plugins and fill in the form its manifest
// declares ([[settings]], manifest_version 2), so a third party's target gets this page
// without UI code. "Test connection" runs the plugin's init and health probe with what is
// typed and keeps nothing; saving keeps it (the server checks it again and the plugin's
// own init must accept it; secrets are sealed and never shown again).
import { useState, useEffect } from "preact/hooks";
import { get, put, post } from "./api.js";
import { Field, FormError, useErrors } from "./ui.jsx";

// The form's text for each declared setting: its value now (a secret's never comes back).
function initialValues(p) {
  const v = {};
  for (const s of p.settings) v[s.name] = s.secret ? "" : s.value ?? "";
  return v;
}

// What is sent: every setting typed, except those equal to their default (so a later
// version's default applies) and empty ones (a secret left empty keeps its value).
function payload(p, values) {
  const out = {};
  for (const s of p.settings) {
    const v = (values[s.name] ?? "").trim();
    if (v === "" || (s.default != null && v === s.default)) continue;
    out[s.name] = v;
  }
  return out;
}

// Checks the browser can make before asking the server (which checks everything again).
function localErrors(p, values) {
  const bad = {};
  for (const s of p.settings) {
    const v = (values[s.name] ?? "").trim();
    const key = `settings.${s.name}`;
    if (v === "") {
      if (s.required && s.default == null && !(s.secret && s.configured)) bad[key] = "required";
    } else if (s.type === "integer" && !/^-?\d+$/.test(v)) bad[key] = "a whole number";
    else if (s.type === "url" && !/^https?:\/\/[^\s/@]+/.test(v)) bad[key] = "an http:// or https:// URL";
  }
  return bad;
}

function SettingField({ s, value, onInput, error }) {
  const label = s.required ? `${s.label} (required)` : s.label;
  const help = [s.help, s.secret && s.configured ? "Set already: leave empty to keep it." : null, s.default != null && !s.secret ? `Default: ${s.default}.` : null]
    .filter(Boolean)
    .join(" ");
  if (s.type === "boolean") {
    return <Field label={label} name={`settings.${s.name}`} type="checkbox" value={value === "true"} onInput={(c) => onInput(c ? "true" : "false")} error={error} help={help || undefined} />;
  }
  return (
    <Field
      label={label}
      name={`settings.${s.name}`}
      type={s.secret ? "password" : s.type === "url" ? "url" : "text"}
      inputMode={s.type === "integer" ? "numeric" : undefined}
      autocomplete={s.secret ? "new-password" : "off"}
      value={value}
      onInput={onInput}
      error={error}
      help={help || undefined}
    />
  );
}

export function TargetForm({ onSaved, onBack, saveLabel = "Save target", Heading = "h2" }) {
  const [plugins, setPlugins] = useState(null);
  const [target, setTarget] = useState(null);
  const [choice, setChoice] = useState(null);
  const [values, setValues] = useState({});
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  const [saved, setSaved] = useState(false);
  const load = () =>
    Promise.all([get("/api/v1/plugins"), get("/api/v1/target")]).then(([list, t]) => {
      const targets = list.plugins.filter((p) => p.kind === "target");
      setPlugins(targets);
      setTarget(t);
      setChoice((c) => c || t.plugin);
      setValues(Object.fromEntries(targets.map((p) => [p.name, initialValues(p)])));
    });
  const current = plugins?.find((p) => p.name === choice);
  const fields = ["plugin", ...(current?.settings || []).map((s) => `settings.${s.name}`)];
  const [errors, setErrors, fail] = useErrors(fields);
  useEffect(() => {
    load().catch((e) => fail(e));
  }, []);
  const setValue = (name) => (v) => setValues({ ...values, [choice]: { ...values[choice], [name]: v } });
  const check = () => {
    const bad = localErrors(current, values[choice] || {});
    setErrors(bad);
    return Object.keys(bad).length === 0;
  };
  const test = async () => {
    if (!check()) return;
    setBusy(true);
    setResult(null);
    try {
      setResult(await post(`/api/v1/plugins/${encodeURIComponent(choice)}/health`, { settings: payload(current, values[choice]) }));
    } catch (e) {
      fail(e);
    } finally {
      setBusy(false);
    }
  };
  const submit = async (e) => {
    e.preventDefault();
    if (!current || !check()) return;
    setBusy(true);
    setSaved(false);
    try {
      await put("/api/v1/target", { plugin: choice, settings: payload(current, values[choice]) });
      await load();
      setSaved(true);
      if (onSaved) await onSaved();
    } catch (err) {
      fail(err);
    } finally {
      setBusy(false);
    }
  };
  if (!plugins) return errors.form ? <FormError error={errors.form} /> : <p>Loading…</p>;
  const basic = current?.settings.filter((s) => !s.advanced) || [];
  const advanced = current?.settings.filter((s) => s.advanced) || [];
  const field = (s) => <SettingField s={s} value={values[choice]?.[s.name] ?? ""} onInput={setValue(s.name)} error={errors[`settings.${s.name}`]} />;
  return (
    <form onSubmit={submit} noValidate aria-labelledby="target-title" class="target-form">
      <Heading id="target-title">Target</Heading>
      <p>Where replicas, recovery points and failed-over machines live. Each target is a plugin installed on this appliance; what it may reach (directories, hosts) is granted in the appliance's configuration.</p>
      {plugins.length === 0 ? (
        <p class="error" role="alert">No target plugin is loaded: see the Plugins screen for refused ones.</p>
      ) : (
        <fieldset class="choices">
          <legend>Target plugin</legend>
          {plugins.map((p) => (
            <label class="choice">
              <input type="radio" name="plugin" value={p.name} checked={choice === p.name} disabled={target?.locked && p.name !== target.plugin} onChange={() => { setChoice(p.name); setResult(null); setErrors({}); }} />
              <span>
                <strong>{p.name}</strong> {p.version}
                {p.name === target?.plugin && <span class="badge">in use</span>}
              </span>
            </label>
          ))}
          {target?.locked && <p class="help">Machines are registered and their replicas are at {target.plugin}: another target cannot be chosen now. Its settings can still change.</p>}
          {errors.plugin && <p class="error" role="alert">{errors.plugin}</p>}
        </fieldset>
      )}
      {current && (
        <div class="panel" data-plugin={current.name}>
          {current.settings.length === 0 && <p>{current.name} declares no settings here: they are given in the appliance's configuration file.</p>}
          <div class="grid">{basic.map(field)}</div>
          {advanced.length > 0 && (
            <details>
              <summary>More settings ({advanced.length})</summary>
              <div class="grid">{advanced.map(field)}</div>
            </details>
          )}
          <div class="buttons">
            <button type="button" class="secondary" onClick={test} disabled={busy}>Test connection</button>
          </div>
          {result && (
            <p class={result.ok ? "ok" : "error"} role="status" data-ok={String(result.ok)}>
              {result.ok ? "Working: " : "Not working: "}
              {result.message} ({result.seconds.toFixed(2)} s)
            </p>
          )}
        </div>
      )}
      <FormError error={errors.form} />
      {saved && !onSaved && <p class="ok" role="status">Saved: {choice} is the target.</p>}
      <div class="buttons">
        {onBack && <button type="button" class="secondary" onClick={onBack}>Back</button>}
        <button type="submit" disabled={busy || !current}>{saveLabel}</button>
      </div>
    </form>
  );
}
