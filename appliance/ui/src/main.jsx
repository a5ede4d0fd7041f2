// The appliance's web UI: the first-boot setup wizard, login, and the dashboard. It talks
// to the same administrator API as the CLI, with the session in an HttpOnly cookie.
import { render } from "preact";
import { useState, useEffect } from "preact/hooks";
import { get, post, openSession, whenLoggedOut, prefetch } from "./api.js";
import { Field, FormError } from "./ui.jsx";
import { Wizard } from "./wizard.jsx";
import { Machines, Alerts, Jobs, Plugins } from "./dashboard.jsx";
import { Plans } from "./plans.jsx";
import { Settings } from "./settings.jsx";
import { Policies } from "./policies.jsx";
import "./app.css";

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const f = () => setHash(location.hash);
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return hash;
}

function Login({ onIn, expired }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try {
      await openSession("/api/v1/login", { name, password });
      onIn();
    } catch (err) {
      setError(err.message);
    }
  };
  return (
    <main class="login">
      <h1>Lifeboat appliance</h1>
      <form onSubmit={submit} noValidate aria-labelledby="login-title">
        <h2 id="login-title">Log in</h2>
        {expired && <p class="warn">Your session ended; log in again.</p>}
        <Field label="Administrator name" name="name" value={name} onInput={setName} autocomplete="username" />
        <Field label="Password" name="password" type="password" value={password} onInput={setPassword} autocomplete="current-password" />
        <FormError error={error} />
        <div class="buttons">
          <button type="submit">Log in</button>
        </div>
      </form>
    </main>
  );
}

// A machine's page (and uPlot) is loaded the first time one is shown.
function LazyMachine({ id }) {
  const [mod, setMod] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    import("./machine.jsx").then(setMod, (e) => setError(e.message));
  }, []);
  if (error) return <p class="error" role="alert">The page did not load: {error}</p>;
  return mod ? <mod.MachinePage id={id} /> : <p aria-busy="true">Loading…</p>;
}

const PAGES = [
  ["#/machines", "Machines", Machines],
  ["#/plans", "Plans", Plans],
  ["#/alerts", "Alerts", Alerts],
  ["#/jobs", "Jobs", Jobs],
  ["#/policies", "Policies", Policies],
  ["#/plugins", "Plugins", Plugins],
  ["#/settings", "Settings", Settings],
];

function Dashboard({ appliance, onLogout }) {
  const hash = useHash();
  const page = PAGES.find(([h]) => hash.startsWith(h)) || PAGES[0];
  const one = /^#\/machines\/([0-9a-f-]{36})$/.exec(hash);
  const Page = page[2];
  return (
    <>
      <header class="top">
        <span class="brand">Lifeboat · {appliance.name}</span>
        <nav aria-label="Main">
          {PAGES.map(([h, label]) => (
            <a href={h} aria-current={page[0] === h ? "page" : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <button type="button" class="secondary" onClick={onLogout}>Log out</button>
      </header>
      <main>
        {one ? <LazyMachine id={one[1]} /> : <Page />}
      </main>
    </>
  );
}

function App() {
  // loading | claim | login | wizard | dashboard
  const [view, setView] = useState({ kind: "loading" });
  const load = async (expired = false) => {
    try {
      const setup = await get("/api/v1/setup");
      if (setup.needed) return setView({ kind: "wizard", step: "claim" });
      try {
        await get("/api/v1/session");
      } catch (e) {
        if (e.status === 401) return setView({ kind: "login", expired });
        throw e;
      }
      const a = await get("/api/v1/appliance");
      setView(a.wizard_step === "done" ? { kind: "dashboard", appliance: a } : { kind: "wizard", step: a.wizard_step });
    } catch (e) {
      setView({ kind: "error", message: e.message });
    }
  };
  useEffect(() => {
    whenLoggedOut(() => setView({ kind: "login", expired: true }));
    load();
  }, []);
  const logout = async () => {
    try {
      await post("/api/v1/logout");
    } finally {
      setView({ kind: "login" });
    }
  };
  switch (view.kind) {
    case "loading":
      return <main aria-busy="true"><p>Loading…</p></main>;
    case "login":
      return <Login expired={view.expired} onIn={() => load()} />;
    case "wizard":
      return <Wizard step={view.step} onStep={(step) => setView({ kind: "wizard", step })} onDone={() => load()} />;
    case "dashboard":
      return <Dashboard appliance={view.appliance} onLogout={logout} />;
    default:
      return (
        <main>
          <h1>Lifeboat appliance</h1>
          <p class="error" role="alert">{view.message}</p>
        </main>
      );
  }
}

// The dashboard's first screen is the machines list: ask for it while the session is
// checked (with no session it is refused, quietly, and asked again after the login).
if (!location.hash || location.hash === "#/machines") prefetch("/api/v1/machines");
render(<App />, document.getElementById("app"));
