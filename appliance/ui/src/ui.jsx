// Small building blocks shared by the screens.
import { useState, useEffect, useRef } from "preact/hooks";

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

// Runs `load` now and every `ms` while mounted; returns [value, error].
export function usePoll(load, ms, deps = []) {
  const [value, setValue] = useState(null);
  const [error, setError] = useState(null);
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
  }, deps);
  return [value, error];
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
