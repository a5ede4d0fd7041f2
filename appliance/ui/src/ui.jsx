// Small building blocks shared by the screens.
import { useState, useEffect, useRef } from "preact/hooks";
import { ApiError, get } from "./api.js";

let nextId = 0;
const uid = (p) => `${p}-${++nextId}`;

// A labelled input with its error beside it (announced to screen readers).
export function Field({ label, help, error, value, onInput, type = "text", autocomplete, name, required, inputMode, min, max }) {
  const id = useRef(uid(name || "f")).current;
  const errId = `${id}-err`;
  const helpId = `${id}-help`;
  const described = [help ? helpId : null, error ? errId : null].filter(Boolean).join(" ") || undefined;
  return (
    <div class={error ? "field bad" : "field"}>
      <label for={id}>{label}</label>
      {type === "checkbox" ? (
        <input id={id} name={name} type="checkbox" checked={value} onChange={(e) => onInput(e.currentTarget.checked)} aria-describedby={described} />
      ) : type === "textarea" ? (
        <textarea id={id} name={name} rows="5" spellcheck={false} value={value} aria-invalid={error ? "true" : undefined} aria-describedby={described} onInput={(e) => onInput(e.currentTarget.value)} />
      ) : (
        <input
          id={id}
          name={name}
          type={type}
          value={value}
          required={required}
          inputMode={inputMode}
          min={min}
          max={max}
          autocomplete={autocomplete}
          aria-invalid={error ? "true" : undefined}
          aria-describedby={described}
          onInput={(e) => onInput(e.currentTarget.value)}
        />
      )}
      {help && <p class="help" id={helpId}>{help}</p>}
      {error && <p class="error" id={errId} role="alert">{error}</p>}
    </div>
  );
}

// The error of a whole form (not of one field).
export function FormError({ error }) {
  return error ? <p class="error form-error" role="alert">{error}</p> : null;
}

// Runs `load` now and every `ms` while mounted; returns [value, error, refresh], where
// `refresh()` runs it again at once (after a change the page made).
export function usePoll(load, ms, deps = []) {
  const [value, setValue] = useState(null);
  const [error, setError] = useState(null);
  const [round, setRound] = useState(0);
  useEffect(() => {
    let live = true;
    let timer;
    const tick = async () => {
      try {
        const v = await load();
        if (live) {
          setValue(v);
          setError(null);
        }
      } catch (e) {
        if (live) setError(e);
      }
      if (live) timer = setTimeout(tick, ms);
    };
    tick();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [...deps, round]);
  return [value, error, () => setRound((r) => r + 1)];
}

export function ago(unixMs) {
  if (!unixMs) return "never";
  const s = Math.max(0, Math.round((Date.now() - unixMs) / 1000));
  return duration(s) + " ago";
}

export function duration(s) {
  if (s == null) return "–";
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

// Errors by field: a server error that names one of the form's `fields` is shown beside
// it; anything else is the form's.
export function useErrors(fields = []) {
  const [errors, setErrors] = useState({});
  const fail = (e, fieldOf = {}) => {
    if (e instanceof ApiError) {
      const f = fieldOf[e.code] || e.field;
      setErrors(f && fields.includes(f) ? { [f]: e.message } : { form: e.message });
    } else setErrors({ form: String(e) });
  };
  return [errors, setErrors, fail];
}


// A labelled select with its error beside it. `options` are [value, label] pairs.
export function Select({ label, help, error, value, onInput, options, name }) {
  const id = useRef(uid(name || "s")).current;
  const errId = `${id}-err`;
  const helpId = `${id}-help`;
  const described = [help ? helpId : null, error ? errId : null].filter(Boolean).join(" ") || undefined;
  return (
    <div class={error ? "field bad" : "field"}>
      <label for={id}>{label}</label>
      <select id={id} name={name} value={value} aria-invalid={error ? "true" : undefined} aria-describedby={described} onChange={(e) => onInput(e.currentTarget.value)}>
        {options.map(([v, l]) => (
          <option value={v}>{l}</option>
        ))}
      </select>
      {help && <p class="help" id={helpId}>{help}</p>}
      {error && <p class="error" id={errId} role="alert">{error}</p>}
    </div>
  );
}

// A modal confirmation: says what will happen; `children` may hold choices. The native
// <dialog> keeps focus inside and closes on Escape.
export function Confirm({ title, children, action, onConfirm, onCancel, danger }) {
  const ref = useRef(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    const cancel = (e) => {
      e.preventDefault();
      onCancel();
    };
    d.addEventListener("cancel", cancel);
    return () => d.removeEventListener("cancel", cancel);
  }, []);
  const go = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} class="confirm" aria-labelledby="confirm-h">
      <form onSubmit={go}>
        <h2 id="confirm-h">{title}</h2>
        {children}
        <FormError error={error} />
        <div class="buttons">
          <button type="submit" class={danger ? "danger" : ""} disabled={busy}>
            {action}
          </button>
          <button type="button" class="secondary" onClick={onCancel}>
            Cancel
          </button>
        </div>
      </form>
    </dialog>
  );
}

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function when(unixMs) {
  return unixMs ? new Date(unixMs).toLocaleString() : "–";
}

// A job followed live until it ends.
export function JobProgress({ id, onEnd }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    let timer;
    const tick = async () => {
      try {
        const j = await get(`/api/v1/jobs/${id}`);
        if (!live) return;
        setJob(j);
        if (j.state === "running") timer = setTimeout(tick, 1000);
        else onEnd?.(j);
      } catch (e) {
        if (live) setError(e.message);
      }
    };
    tick();
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [id]);
  if (error) return <p class="error" role="alert">{error}</p>;
  if (!job) return null;
  return (
    <div class={`job ${job.state}`} role="status" data-job={job.id} data-state={job.state}>
      <strong>
        Job {job.id}, {job.kind}: {job.state}
      </strong>{" "}
      <progress max="1" value={job.progress} aria-label={`job ${job.id} progress`} /> {Math.round(job.progress * 100)} % {job.message}
    </div>
  );
}
