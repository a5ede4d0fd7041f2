//! Recovery plans through the `lifeboat` CLI: two machines in two groups, an allow-listed
//! script before the first group, the example action plugin after each, and a manual step
//! that holds the plan until it is confirmed. The steps run in order with the plan's
//! context; a plan whose script fails stops there and fails over nothing more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

/// What the phases of the plan test share: the site, the log action's directory, the
/// script's marker file, the file plans are written to, and the two machines.
struct Env<'a> {
    site: &'a Site,
    log_dir: &'a Path,
    marker: &'a Path,
    plan_file: &'a Path,
    machines: &'a [String],
}

#[test]
fn a_plan_runs_its_groups_and_actions_in_order() {
    let site = Site::new();
    let root = site.root().to_owned();
    let log_dir = root.join("planlog");
    std::fs::create_dir(&log_dir).unwrap();
    let sha = site.install_plugin("log-action", &root.join("plugins"));
    let marker = root.join("marker");
    let script = root.join("mark.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$LIFEBOAT_PLAN $LIFEBOAT_MODE group=$LIFEBOAT_GROUP $LIFEBOAT_STAGE machines=$LIFEBOAT_MACHINES vms=$LIFEBOAT_VMS\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "\n[plugins.grants.log-action]\nsha256 = \"{sha}\"\ndirectories = {{ \"/log\" = \"{}\" }}\n\
         [plans.scripts]\nmark = [\"{}\"]\nfail = [\"/bin/false\"]\n",
        log_dir.display(),
        script.display()
    );
    let cfg = site.config_with("all", Roles::ALL, &extra);
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);

    let mut machines = Vec::new();
    for i in 0..2 {
        let disk = root.join(format!("disk{i}.img"));
        make_disk(&disk, 4, 20 + i);
        let state = root.join(format!("agent{i}"));
        site.register_agent(&cfg, &state);
        site.agent_once(&site.agent_config(&state, &[disk], 1));
        machines.push(Site::machine_id(&state));
    }
    wait_for(Duration::from_secs(60), "both machines' points", || {
        (site.points(&cfg).len() == 2).then_some(())
    });
    site.lifeboat_setup(&cfg);

    let plan_file = root.join("plan.json");
    let env = &Env {
        site: &site,
        log_dir: &log_dir,
        marker: &marker,
        plan_file: &plan_file,
        machines: &machines,
    };

    phase_set_plans(env);
    let job = phase_test_run_waits(env);
    phase_confirm_and_finish(env, &job);
    phase_failing_script(env);
    phase_real_failover(env);
}

/// Bad plans are refused; the plan `web` is set.
fn phase_set_plans(env: &Env) {
    let Env { site, plan_file, machines, .. } = *env;
    // Bad plans are refused, naming what is wrong.
    for (plan, what) in [
        (
            format!(
                r#"{{"groups":[{{"machines":["{}"],"pre":[{{"script":"nope"}}]}}]}}"#,
                machines[0]
            ),
            "nope",
        ),
        (r#"{"groups":[{"machines":["no-such-machine"]}]}"#.to_owned(), "no-such-machine"),
        (r#"{"groups":[{"post":[{"plugin":"zstd"}]}]}"#.to_owned(), "zstd"),
        (
            r#"{"groups":[{"post":[{"plugin":"log-action","script":"mark"}]}]}"#.to_owned(),
            "exactly one",
        ),
        (r#"{"groups":[]}"#.to_owned(), "groups"),
    ] {
        std::fs::write(plan_file, &plan).unwrap();
        let o = site.lifeboat(&["plan", "set", "web", plan_file.to_str().unwrap()], None);
        assert_eq!(o.status.code(), Some(2), "{plan}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(what),
            "{plan}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    let plan = format!(
        r#"{{"groups":[
            {{"machines":["{}"],"pre":[{{"script":"mark"}}],"post":[{{"plugin":"log-action"}}]}},
            {{"machines":["{}"],"pre":[{{"manual":"confirm the database is ready"}}],
              "post":[{{"plugin":"log-action"}},{{"script":"mark"}}]}}]}}"#,
        machines[0], machines[1]
    );
    std::fs::write(plan_file, &plan).unwrap();
    let v = site.lifeboat_json(&["plan", "set", "web", plan_file.to_str().unwrap()]);
    assert_eq!(v["plans"][0]["name"], "web");
}

/// The plan `web` run as a test failover, up to its manual step; the job's id.
fn phase_test_run_waits(env: &Env) -> String {
    let Env { site, log_dir, .. } = *env;
    // Run as a test failover: the first group goes, then the plan waits for a person.
    let v = site.lifeboat_json(&["plan", "run", "web", "--no-wait"]);
    let job = v["id"].as_u64().unwrap().to_string();
    wait_for(Duration::from_secs(60), "the manual step", || {
        let j = site.lifeboat_json(&["jobs", &job]);
        assert_ne!(j["state"], "failed", "{j}");
        j["message"].as_str().unwrap_or("").contains("confirm the database is ready").then_some(())
    });
    let log = std::fs::read_to_string(log_dir.join("plan.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with("plan=web mode=test-failover group=0 stage=post machines="), "{log}");
    assert!(log.contains(":tf"), "the post action sees the group's VM: {log}");
    let v = site.lifeboat_json(&["test-failovers"]);
    assert_eq!(v["test_failovers"].as_array().unwrap().len(), 1, "group 1 waits: {v}");
    job
}

/// The manual step confirmed (only the one the job waits on), the rest of the plan runs in
/// order with the plan's context.
fn phase_confirm_and_finish(env: &Env, job: &str) {
    let Env { site, log_dir, marker, machines, .. } = *env;
    let o = site.lifeboat(&["plan", "continue", job, "--step", "2"], None);
    assert_eq!(
        o.status.code(),
        Some(5),
        "the job waits on step 1: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        site.lifeboat(&["plan", "continue", job, "--step", "1"], None).status.code(),
        Some(0)
    );
    let j = wait_for(Duration::from_secs(60), "the plan", || {
        let j = site.lifeboat_json(&["jobs", job]);
        assert_ne!(j["state"], "failed", "{j}");
        (j["state"] == "succeeded").then_some(j)
    });
    let steps: Vec<&str> =
        j["result"]["log"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(steps.len(), 7, "{steps:?}");
    assert!(steps[0].starts_with("group 0 pre: script mark"), "{steps:?}");
    assert!(steps[3].contains("manual step confirmed"), "{steps:?}");
    let log = std::fs::read_to_string(log_dir.join("plan.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.lines().nth(1).unwrap().starts_with("plan=web mode=test-failover group=1 stage=post"),
        "{log}"
    );
    let marks = std::fs::read_to_string(marker).unwrap();
    let marks: Vec<&str> = marks.lines().collect();
    assert_eq!(marks.len(), 2, "{marks:?}");
    assert_eq!(marks[0], format!("web test-failover group=0 pre machines={} vms=", machines[0]));
    assert!(
        marks[1].starts_with(&format!(
            "web test-failover group=1 post machines={} vms=tf",
            machines[1]
        )),
        "{marks:?}"
    );
    let v = site.lifeboat_json(&["test-failovers"]);
    assert_eq!(v["test_failovers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        site.lifeboat(&["plan", "continue", job], None).status.code(),
        Some(5),
        "nothing to confirm"
    );
}

/// A plan whose script fails.
fn phase_failing_script(env: &Env) {
    let Env { site, plan_file, machines, .. } = *env;
    // A plan whose script fails stops there: nothing of it is failed over.
    let broken =
        format!(r#"{{"groups":[{{"machines":["{}"],"pre":[{{"script":"fail"}}]}}]}}"#, machines[0]);
    std::fs::write(plan_file, &broken).unwrap();
    site.lifeboat_json(&["plan", "set", "broken", plan_file.to_str().unwrap()]);
    let o = site.lifeboat(&["plan", "run", "broken"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("script fail failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = site.lifeboat_json(&["test-failovers"]);
    assert_eq!(v["test_failovers"].as_array().unwrap().len(), 2, "{v}");
    let v = site.lifeboat_json(&["plan", "delete", "broken"]);
    assert_eq!(v["plans"].as_array().unwrap().len(), 1);
}

/// A plan run as a real failover.
fn phase_real_failover(env: &Env) {
    let Env { site, log_dir, plan_file, machines, .. } = *env;
    // A plan run as a real failover: the machine fails over (its own job), then the post
    // action sees its VM.
    let go = format!(
        r#"{{"groups":[{{"machines":["{}"],"post":[{{"plugin":"log-action"}}]}}]}}"#,
        machines[1]
    );
    std::fs::write(plan_file, &go).unwrap();
    site.lifeboat_json(&["plan", "set", "go", plan_file.to_str().unwrap()]);
    let j = site.lifeboat_json(&["plan", "run", "go", "--failover", "--point", "latest-processed"]);
    assert_eq!(j["state"], "succeeded", "{j}");
    let v = site.lifeboat_json(&["failovers"]);
    let f = &v["failovers"][0];
    assert_eq!(
        (f["machine_id"].as_str(), f["state"].as_str()),
        (Some(machines[1].as_str()), Some("failed-over")),
        "{v}"
    );
    let log = std::fs::read_to_string(log_dir.join("plan.log")).unwrap();
    assert!(
        log.lines()
            .last()
            .unwrap()
            .starts_with("plan=go mode=failover group=0 stage=post machines="),
        "{log}"
    );
    assert!(
        log.lines().last().unwrap().contains(":fo"),
        "the post action sees the failed-over VM: {log}"
    );
}
