// One machine's page: its state, RPO and bytes received over time (uPlot, from the
// samples the appliance stores), its recovery points on a timeline, its disks, the VM a
// failover makes (editable), the failover it is in, and the actions: test failover,
// cleanup, failover (or change its point), commit, reprotect, failback. Each action is
// confirmed first, then followed live as a job.
import { useState, useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { get, post, put } from "./api.js";
import { usePoll, ago, duration, bytes, when, Field, Select, FormError, Confirm, useErrors, JobProgress } from "./ui.jsx";

const REFRESH_MS = 2000;
const HISTORY_MS = 10000;

const KIND_LABEL = { crash: "crash-consistent", app: "app-consistent", group: "group" };

// A time series drawn by uPlot, redrawn in place when the data changes and resized with
// its box. `summary` is what a screen reader reads instead of the drawing.
function Plot({ title, summary, data, label, stroke }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const el = box.current;
    const width = () => Math.max(280, Math.min(el.clientWidth, 1100));
    plot.current = new uPlot(
      {
        width: width(),
        height: 200,
        scales: { x: { time: true } },
        series: [{}, { label, stroke, width: 2, fill: `${stroke}22`, spanGaps: false }],
        axes: [{}, { label, size: 60 }],
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
      },
      data,
      el,
    );
    const ro = new ResizeObserver(() => plot.current.setSize({ width: width(), height: 200 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current.destroy();
    };
  }, []);
  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);
  return (
    <figure class="plot">
      <figcaption>{title}</figcaption>
      <div ref={box} role="img" aria-label={`${title}: ${summary}`} />
      <p class="help">{summary}</p>
    </figure>
  );
}

function History({ id, rpoTarget }) {
  const [data, error] = usePoll(() => get(`/api/v1/machines/${id}/history?hours=24`), HISTORY_MS, [id]);
  if (error) return <p class="error" role="alert">{error.message}</p>;
  if (!data) return <p aria-busy="true">Loading the history…</p>;
  const s = data.samples;
  if (s.length === 0)
    return <p>No sample yet: the appliance samples every {duration(data.sample_secs)}; the plots start with the first.</p>;
  const t = s.map((x) => x.unix_ms / 1000);
  const rpo = s.map((x) => x.rpo_secs);
  const mbps = s.map((x) => x.received_bytes / x.span_secs / 1e6);
  const known = rpo.filter((x) => x != null);
  const worst = known.length ? Math.max(...known) : null;
  const over = rpoTarget ? known.filter((x) => x > rpoTarget).length : 0;
  const peak = Math.max(...mbps);
  return (
    <div class="plots">
      <Plot
        title="Achieved RPO (seconds), last 24 h"
        label="RPO (s)"
        stroke="#0b5cad"
        data={[t, rpo]}
        summary={
          `${s.length} samples; now ${duration(rpo[rpo.length - 1])}, worst ${duration(worst)}` +
          (rpoTarget ? `; ${over} over the policy's ${duration(rpoTarget)}` : "")
        }
      />
      <Plot
        title="Data received (MB/s), last 24 h"
        label="MB/s"
        stroke="#1e6b33"
        data={[t, mbps]}
        summary={`${s.length} samples; now ${mbps[mbps.length - 1].toFixed(2)} MB/s, peak ${peak.toFixed(2)} MB/s`}
      />
    </div>
  );
}

// The points on a time axis, one mark per point (shape and colour by kind); a mark picks
// the point for a test failover.
function Timeline({ points, onPick }) {
  if (points.length === 0) return <p>No recovery point yet.</p>;
  const first = points[0].created_unix_ms;
  const last = points[points.length - 1].created_unix_ms;
  const span = Math.max(1, last - first);
  const counts = points.reduce((c, p) => ({ ...c, [kindOf(p)]: (c[kindOf(p)] || 0) + 1 }), {});
  return (
    <>
      <p>
        {points.length} {points.length === 1 ? "point" : "points"} from {when(first)} to {when(last)}:{" "}
        {Object.entries(counts)
          .map(([k, n]) => `${n} ${KIND_LABEL[k]}`)
          .join(", ")}
        .
      </p>
      <div class="timeline" role="group" aria-label="Recovery points by time">
        {points.map((p) => (
          <button
            type="button"
            class={`mark ${kindOf(p)}`}
            style={{ left: `calc(${((p.created_unix_ms - first) / span) * 100}% - 6px)` }}
            aria-label={`${KIND_LABEL[kindOf(p)]} point ${p.point} of ${when(p.created_unix_ms)}: test failover from it`}
            title={`${KIND_LABEL[kindOf(p)]} · ${when(p.created_unix_ms)}`}
            onClick={() => onPick(p.id)}
          />
        ))}
      </div>
      <p class="legend">
        <span class="mark crash" aria-hidden="true" /> crash <span class="mark app" aria-hidden="true" /> app{" "}
        <span class="mark group" aria-hidden="true" /> group
      </p>
    </>
  );
}

const kindOf = (p) => (p.groups && p.groups.length ? "group" : p.kind);

function VmSpec({ id, disks }) {
  const [spec, setSpec] = useState(null);
  const [form, setForm] = useState(null);
  const [saved, setSaved] = useState(false);
  const [errors, setErrors, fail] = useErrors(["firmware", "cpus", "memory_mib", "boot_disk", "nics"]);
  const load = async () => {
    const s = await get(`/api/v1/machines/${id}/vm-spec`);
    setSpec(s);
    setForm({
      firmware: s.firmware,
      cpus: String(s.cpus),
      memory_mib: String(s.memory_mib),
      boot_disk: String(s.disks[0] ?? 0),
      nics: s.nics.map((n) => ({ source: n.source, network: n.network, mac: n.mac || "", ip: n.ip || "" })),
    });
  };
  useEffect(() => {
    load().catch((e) => fail(e));
  }, [id]);
  if (!form) return <FormError error={errors.form} />;
  const set = (k) => (v) => {
    setSaved(false);
    setForm({ ...form, [k]: v });
  };
  const setNic = (i, k) => (v) => {
    setSaved(false);
    setForm({ ...form, nics: form.nics.map((n, j) => (i === j ? { ...n, [k]: v } : n)) });
  };
  const nicError = (i, k) => errors[`nics[${i}].${k}`];
  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    const whole = (v, f) => {
      if (!/^\d+$/.test(v.trim())) throw { field: f, message: `${f}: expected a whole number` };
      return Number(v);
    };
    let body;
    try {
      body = {
        firmware: form.firmware,
        cpus: whole(form.cpus, "cpus"),
        memory_mib: whole(form.memory_mib, "memory_mib"),
        boot_disk: Number(form.boot_disk),
        nics: form.nics.map((n) => ({
          source: n.source.trim(),
          network: n.network.trim(),
          mac: n.mac.trim() || null,
          ip: n.ip.trim() || null,
        })),
      };
    } catch (bad) {
      setErrors({ [bad.field]: bad.message });
      return;
    }
    try {
      await put(`/api/v1/machines/${id}/vm-spec`, body);
      await load();
      setSaved(true);
    } catch (err) {
      // nics[i].field errors are shown beside that interface's field.
      if (err.field && err.field.startsWith("nics[")) setErrors({ [err.field]: err.message });
      else fail(err);
    }
  };
  return (
    <form onSubmit={submit} noValidate aria-labelledby="vm-h" class="vmspec">
      <h3 id="vm-h">The VM a failover makes</h3>
      {spec.detected && (
        <p class="help">
          Detected on the machine: {spec.detected.firmware}, {spec.detected.cpus} CPUs, {spec.detected.memory_mib} MiB,{" "}
          {spec.detected.nics.length} network interfaces.
        </p>
      )}
      <div class="grid">
        <Select label="Firmware" name="firmware" value={form.firmware} onInput={set("firmware")} options={[["bios", "BIOS"], ["uefi", "UEFI"]]} error={errors.firmware} />
        <Field label="CPUs" name="cpus" inputMode="numeric" value={form.cpus} onInput={set("cpus")} error={errors.cpus} help="1 to 256" />
        <Field label="Memory (MiB)" name="memory_mib" inputMode="numeric" value={form.memory_mib} onInput={set("memory_mib")} error={errors.memory_mib} help="128 to 4194304" />
        <Select label="Boot disk" name="boot_disk" value={form.boot_disk} onInput={set("boot_disk")} options={disks.map((d) => [String(d.index), `disk ${d.index} (${bytes(d.size)})`])} error={errors.boot_disk} />
      </div>
      <h4>Network mapping</h4>
      {form.nics.length === 0 && <p>No interface: the VM gets none.</p>}
      {form.nics.map((n, i) => (
        <fieldset class="nic">
          <legend>Interface {i + 1}</legend>
          <div class="grid">
            <Field label="Source interface" name={`nic${i}-source`} value={n.source} onInput={setNic(i, "source")} error={nicError(i, "source")} />
            <Field label="Target network" name={`nic${i}-network`} value={n.network} onInput={setNic(i, "network")} error={nicError(i, "network")} />
            <Field label="MAC address (empty: the source's)" name={`nic${i}-mac`} value={n.mac} onInput={setNic(i, "mac")} error={nicError(i, "mac")} />
            <Field label="Address at the target (CIDR, empty: as on the source)" name={`nic${i}-ip`} value={n.ip} onInput={setNic(i, "ip")} error={nicError(i, "ip")} />
          </div>
          <button type="button" class="secondary" onClick={() => set("nics")(form.nics.filter((_, j) => j !== i))}>
            Remove interface {i + 1}
          </button>
        </fieldset>
      ))}
      <FormError error={errors.form || errors.nics} />
      <div class="buttons">
        <button type="button" class="secondary" onClick={() => set("nics")([...form.nics, { source: `eth${form.nics.length}`, network: "default", mac: "", ip: "" }])}>
          Add an interface
        </button>
        <button type="submit">Save the VM settings</button>
      </div>
      {saved && (
        <p class="ok" role="status">
          Saved: the next failover makes this VM.
        </p>
      )}
    </form>
  );
}

const POINT_CHOICES = [
  ["latest", "Latest: first apply everything received, then its newest point"],
  ["latest-processed", "Latest processed: the newest point at the target now"],
  ["latest-app", "Latest app-consistent point"],
  ["latest-group", "Latest consistency-group point"],
];

function PointPicker({ points, value, onInput }) {
  const options = [
    ...POINT_CHOICES,
    ...points
      .slice()
      .reverse()
      .slice(0, 200)
      .map((p) => [p.id, `${when(p.created_unix_ms)} · ${KIND_LABEL[kindOf(p)]} · point ${p.point}`]),
  ];
  return <Select label="Recovery point" name="point" value={value} onInput={onInput} options={options} />;
}

// What each action does, said before it is done.
function actionText(kind, m, extra) {
  switch (kind) {
    case "test-failover":
      return "A VM is made from the chosen point on the target's isolated test network. Replication goes on untouched; clean the test failover up when done.";
    case "cleanup":
      return `The test VM ${extra.vm} and its disks are deleted. The replica and the recovery points stay.`;
    case "failover":
      return `${m.hostname} is brought up at the target from the chosen point, on the production network mapping. Replication from the source stops. Shut the source down first if it still runs: both would serve.`;
    case "change-point":
      return "The failed-over VM is stopped and made again from another point. Whatever it wrote since it started is lost.";
    case "commit":
      return "The failover is made final: every other recovery point and the logs not applied are deleted. The failed-over VM stays. This cannot be undone.";
    case "reprotect":
      return "Reverse replication starts: the original machine's agent (lifeboat-agent reprotect) pulls the blocks that differ from the failed-over VM, so that the machine can fail back.";
    case "failback":
      return "The failed-over VM is stopped, the last changes reach the original machine, the replicas are made anew and replication goes forward again. The original machine becomes the protected one.";
    default:
      return "";
  }
}

const ACTION_TITLE = {
  "test-failover": "Test failover",
  cleanup: "Clean up the test failover",
  failover: "Fail over",
  "change-point": "Change the failover's point",
  commit: "Commit the failover",
  reprotect: "Reprotect",
  failback: "Fail back",
};

function Actions({ m, points, failover, tests, pick, setPick, onJob }) {
  const [asking, setAsking] = useState(null); // {kind, ...}
  const [point, setPoint] = useState("latest");
  useEffect(() => {
    if (pick) {
      setPoint(pick);
      setAsking({ kind: "test-failover" });
      setPick(null);
    }
  }, [pick]);
  const state = failover?.state;
  const start = async () => {
    const k = asking.kind;
    const path = {
      "test-failover": `/api/v1/machines/${m.id}/test-failover`,
      failover: `/api/v1/machines/${m.id}/failover`,
      "change-point": `/api/v1/machines/${m.id}/failover`,
      commit: `/api/v1/machines/${m.id}/commit`,
      reprotect: `/api/v1/machines/${m.id}/reprotect`,
      failback: `/api/v1/machines/${m.id}/failback`,
      cleanup: `/api/v1/test-failovers/${asking.test?.id}/cleanup`,
    }[k];
    const body = ["test-failover", "failover", "change-point"].includes(k) ? { point } : undefined;
    const job = await post(path, body);
    setAsking(null);
    onJob(job.id);
  };
  const can = {
    "test-failover": points.length > 0,
    failover: points.length > 0 && (!failover || state === "failover-failed"),
    "change-point": state === "failed-over",
    commit: state === "failed-over",
    reprotect: state === "committed",
    failback: state === "reprotected",
  };
  const choosesPoint = asking && ["test-failover", "failover", "change-point"].includes(asking.kind);
  return (
    <>
      <div class="buttons actions">
        {Object.entries(can)
          .filter(([, ok]) => ok)
          .map(([k]) => (
            <button type="button" class={["failover", "commit", "change-point"].includes(k) ? "danger" : ""} onClick={() => setAsking({ kind: k })}>
              {ACTION_TITLE[k]}…
            </button>
          ))}
        {tests.map((t) => (
          <button type="button" class="secondary" onClick={() => setAsking({ kind: "cleanup", test: t })}>
            Clean up test failover {t.id}…
          </button>
        ))}
      </div>
      {asking && (
        <Confirm
          title={`${ACTION_TITLE[asking.kind]}: ${m.hostname}`}
          action={ACTION_TITLE[asking.kind]}
          danger={["failover", "commit", "change-point"].includes(asking.kind)}
          onConfirm={start}
          onCancel={() => setAsking(null)}
        >
          <p>{actionText(asking.kind, m, asking.test || {})}</p>
          {choosesPoint && <PointPicker points={points} value={point} onInput={setPoint} />}
        </Confirm>
      )}
    </>
  );
}

// Gives the machine another policy (made on the Policies screen); agents take it at their
// next check.
function PolicyPicker({ id, current, names }) {
  const [value, setValue] = useState(current);
  const [saved, setSaved] = useState(false);
  const [errors, , fail] = useErrors(["policy"]);
  const save = async (e) => {
    e.preventDefault();
    setSaved(false);
    try {
      await put(`/api/v1/machines/${id}/policy`, { policy: value });
      setSaved(true);
    } catch (err) {
      fail(err);
    }
  };
  return (
    <form class="inline-form" onSubmit={save} aria-label="Policy of this machine">
      <Select label="Policy" name="policy" value={value} onInput={setValue} options={names.map((n) => [n, n])} error={errors.policy} />
      <button type="submit" class="secondary" disabled={value === current && !saved}>Give it this policy</button>
      {saved && <p class="ok" role="status">Saved; its agent takes it at its next check.</p>}
      <FormError error={errors.form} />
    </form>
  );
}

export function MachinePage({ id }) {
  const [list, listError] = usePoll(() => get("/api/v1/machines"), REFRESH_MS, [id]);
  const [pts] = usePoll(() => get(`/api/v1/machines/${id}/points`), REFRESH_MS, [id]);
  const [fos] = usePoll(() => get("/api/v1/failovers"), REFRESH_MS, [id]);
  const [tfs] = usePoll(() => get("/api/v1/test-failovers"), REFRESH_MS, [id]);
  const [pols] = usePoll(() => get("/api/v1/policies"), 30000, [id]);
  const [jobs, setJobs] = useState([]);
  const [pick, setPick] = useState(null);
  const m = list?.machines.find((x) => x.id === id);
  if (listError) return <p class="error" role="alert">{listError.message}</p>;
  if (!list) return <p aria-busy="true">Loading…</p>;
  if (!m)
    return (
      <section>
        <h2>No such machine</h2>
        <p>
          No machine has the id {id}. <a href="#/machines">All machines</a>
        </p>
      </section>
    );
  const points = pts?.points || [];
  const failover = fos?.failovers.find((f) => f.machine_id === id);
  const tests = (tfs?.test_failovers || []).filter((t) => t.machine_id === id && !t.cleaned_unix_ms);
  const policy = pols?.policies.find((p) => p.name === m.policy)?.policy;
  // A policy not stored yet has the defaults (warning at 900 s).
  const rpoTarget = policy?.rpo_warning_secs ?? 900;
  return (
    <section aria-labelledby="machine-h" class="machine">
      <p>
        <a href="#/machines">← All machines</a>
      </p>
      <h2 id="machine-h">{m.hostname}</h2>
      <p class="id">{m.id}</p>
      <dl class="facts">
        <div>
          <dt>State</dt>
          <dd>{m.state}</dd>
        </div>
        <div>
          <dt>Health</dt>
          <dd>
            <span class={`health ${m.health}`}>{m.health}</span>
          </dd>
        </div>
        <div>
          <dt>RPO</dt>
          <dd>
            {duration(m.rpo_secs)}
            {rpoTarget ? ` (policy ${duration(rpoTarget)})` : ""}
          </dd>
        </div>
        <div>
          <dt>Last contact</dt>
          <dd>{ago(m.last_seen_unix_ms)}</dd>
        </div>
        <div>
          <dt>Backlog</dt>
          <dd>{m.backlog_batches} batches</dd>
        </div>
        <div>
          <dt>Policy</dt>
          <dd>{m.policy}</dd>
        </div>
        <div>
          <dt>Groups</dt>
          <dd>{m.groups.length ? m.groups.join(", ") : "none"}</dd>
        </div>
        <div>
          <dt>Failover</dt>
          <dd data-failover-state={failover?.state || "none"}>{failover ? `${failover.state}${failover.vm ? ` (VM ${failover.vm})` : ""}` : "none"}</dd>
        </div>
      </dl>
      {pols && <PolicyPicker id={id} current={m.policy} names={pols.policies.map((p) => p.name)} />}
      <h3>Actions</h3>
      <Actions m={m} points={points} failover={failover} tests={tests} pick={pick} setPick={setPick} onJob={(j) => setJobs([j, ...jobs])} />
      {jobs.map((j) => (
        <JobProgress id={j} />
      ))}
      {tests.length > 0 && (
        <ul class="tests">
          {tests.map((t) => (
            <li data-test-failover={t.id}>
              Test failover {t.id}: VM {t.vm} from point {t.point_id}, made {ago(t.created_unix_ms)}
            </li>
          ))}
        </ul>
      )}
      <h3>History</h3>
      <History id={id} rpoTarget={rpoTarget} />
      <h3>Recovery points</h3>
      <Timeline points={points} onPick={setPick} />
      <h3>Disks</h3>
      <table class="disks">
        <thead>
          <tr>
            <th scope="col">Disk</th>
            <th scope="col">Size</th>
          </tr>
        </thead>
        <tbody>
          {m.disks.map((d) => (
            <tr>
              <th scope="row">{d.index}</th>
              <td>{bytes(d.size)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <VmSpec id={id} disks={m.disks} />
    </section>
  );
}
