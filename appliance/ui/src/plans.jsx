// Recovery plans: each plan's groups (machines by name, pre and post actions), edited as
// JSON (the appliance checks it and names the field it refuses), run as a test failover or
// a failover after a confirmation, followed live; a manual step is confirmed here, and a
// plan that failed shows the steps it did and where it stopped.
import { useState } from "preact/hooks";
import { get, put, post, call } from "./api.js";
import { usePoll, Confirm, Select, FormError, ago } from "./ui.jsx";

const REFRESH_MS = 2000;

function actionText(a) {
  if (a.manual) return `manual step: ${a.manual}`;
  if (a.script) return `script ${a.script}`;
  return `action plugin ${a.plugin}`;
}

// A plan job: progress, the manual step it waits on (with its confirmation), and once it
// ended, its log.
function PlanJob({ job }) {
  const [error, setError] = useState(null);
  const waiting = /^waiting for confirmation of step (\d+): (.*?) \(lifeboat plan continue/.exec(job.message);
  const confirm = async () => {
    setError(null);
    try {
      await post(`/api/v1/jobs/${job.id}/continue`, { step: Number(waiting[1]) });
    } catch (e) {
      setError(e.message);
    }
  };
  return (
    <div class={`job ${job.state}`} data-job={job.id} data-state={job.state}>
      <strong>
        Job {job.id}: {job.state}
      </strong>{" "}
      <progress max="1" value={job.progress} aria-label={`job ${job.id} progress`} /> {job.message}
      {job.state === "running" && waiting && (
        <div class="buttons">
          <button type="button" onClick={confirm}>
            Confirm step {waiting[1]}: {waiting[2]}
          </button>
        </div>
      )}
      {job.result?.log && (
        <ol class="plan-log">
          {job.result.log.map((l) => (
            <li>{l}</li>
          ))}
        </ol>
      )}
      <FormError error={error} />
    </div>
  );
}

function Editor({ name, plan, onDone }) {
  const [text, setText] = useState(JSON.stringify(plan || { groups: [{ machines: [], pre: [], post: [] }] }, null, 2));
  const [planName, setPlanName] = useState(name || "");
  const [error, setError] = useState(null);
  const save = async (e) => {
    e.preventDefault();
    setError(null);
    let body;
    try {
      body = JSON.parse(text);
    } catch (err) {
      setError(`not JSON: ${err.message}`);
      return;
    }
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(planName)) {
      setError("name: letters, digits, '.', '_' or '-', 1 to 64");
      return;
    }
    try {
      await put(`/api/v1/plans/${encodeURIComponent(planName)}`, body);
      onDone();
    } catch (err) {
      setError(err.message);
    }
  };
  return (
    <form onSubmit={save} class="panel" aria-labelledby="plan-edit-h" noValidate>
      <h3 id="plan-edit-h">{name ? `Edit plan ${name}` : "New plan"}</h3>
      {!name && (
        <div class="field">
          <label for="plan-name">Plan name</label>
          <input id="plan-name" value={planName} onInput={(e) => setPlanName(e.currentTarget.value)} />
        </div>
      )}
      <div class="field">
        <label for="plan-json">Plan (JSON)</label>
        <textarea id="plan-json" rows="14" spellcheck={false} value={text} onInput={(e) => setText(e.currentTarget.value)} aria-describedby="plan-json-help" />
        <p class="help" id="plan-json-help">
          {`{"groups": [{"machines": ["<machine id>"], "pre": [{"manual": "…"}], "post": [{"script": "<allow-listed>"}]}]}`} — groups fail over in
          order, the machines of a group together.
        </p>
      </div>
      <FormError error={error} />
      <div class="buttons">
        <button type="submit">Save the plan</button>
        <button type="button" class="secondary" onClick={onDone}>
          Cancel
        </button>
      </div>
    </form>
  );
}

export function Plans() {
  const [data, error] = usePoll(() => get("/api/v1/plans"), REFRESH_MS);
  const [machines] = usePoll(() => get("/api/v1/machines"), 10000);
  const [jobs] = usePoll(() => get("/api/v1/jobs"), REFRESH_MS);
  const [editing, setEditing] = useState(null); // {name?, plan?}
  const [running, setRunning] = useState(null); // plan name
  const [mode, setMode] = useState("test-failover");
  const [removing, setRemoving] = useState(null);
  const host = (id) => machines?.machines.find((m) => m.id === id)?.hostname || id;
  const plans = data?.plans || [];
  const planJobs = (jobs?.jobs || []).filter((j) => j.kind === "plan");
  const run = async () => {
    await post(`/api/v1/plans/${encodeURIComponent(running)}/run`, { mode });
    setRunning(null);
  };
  return (
    <section aria-labelledby="plans-h">
      <div class="bar">
        <h2 id="plans-h">Recovery plans</h2>
        <button type="button" onClick={() => setEditing({})}>
          New plan…
        </button>
      </div>
      {error && <p class="error" role="alert">{error.message}</p>}
      {editing && <Editor name={editing.name} plan={editing.plan} onDone={() => setEditing(null)} />}
      {data && plans.length === 0 && <p>No recovery plan yet.</p>}
      {plans.map(({ name, plan }) => (
        <article class="panel plan" data-plan={name}>
          <h3>{name}</h3>
          <ol>
            {plan.groups.map((g, i) => (
              <li>
                Group {i + 1}: {g.machines.map(host).join(", ") || "no machine"}
                {g.pre.length > 0 && <div class="help">before: {g.pre.map(actionText).join("; ")}</div>}
                {g.post.length > 0 && <div class="help">after: {g.post.map(actionText).join("; ")}</div>}
              </li>
            ))}
          </ol>
          <div class="buttons">
            <button type="button" onClick={() => setRunning(name)}>
              Run {name}…
            </button>
            <button type="button" class="secondary" onClick={() => setEditing({ name, plan })}>
              Edit {name}
            </button>
            <button type="button" class="secondary" onClick={() => setRemoving(name)}>
              Delete {name}…
            </button>
          </div>
        </article>
      ))}
      {running && (
        <Confirm title={`Run plan ${running}`} action={`Run ${running}`} danger={mode === "failover"} onConfirm={run} onCancel={() => setRunning(null)}>
          <p>
            {mode === "failover"
              ? "Every machine of the plan fails over, group after group, on the production network mapping. Replication from the sources stops."
              : "Every machine of the plan gets a test failover, group after group, on the isolated test network; replication goes on. Clean the test failovers up from each machine's page."}
          </p>
          <Select label="Mode" name="mode" value={mode} onInput={setMode} options={[["test-failover", "Test failover"], ["failover", "Failover"]]} />
        </Confirm>
      )}
      {removing && (
        <Confirm
          title={`Delete plan ${removing}`}
          action={`Delete ${removing}`}
          danger
          onConfirm={async () => {
            await call("DELETE", `/api/v1/plans/${encodeURIComponent(removing)}`);
            setRemoving(null);
          }}
          onCancel={() => setRemoving(null)}
        >
          <p>The plan is deleted; its machines and their failovers are not touched.</p>
        </Confirm>
      )}
      <h3>Plan runs</h3>
      {planJobs.length === 0 && <p>No plan has run yet.</p>}
      {planJobs.slice(0, 10).map((j) => (
        <>
          <p class="help">started {ago(j.created_unix_ms)}</p>
          <PlanJob job={j} />
        </>
      ))}
    </section>
  );
}
