//! Tests of the API types: their checks of untrusted input.

use super::*;

fn system() -> SystemInfo {
    SystemInfo {
        firmware: "bios".into(),
        cpus: 4,
        memory_mib: 8192,
        nics: vec![NicInfo {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            addresses: vec!["192.0.2.10/24".into(), "2001:db8::5/64".into()],
        }],
    }
}

#[test]
fn agent_alerts_are_checked() {
    let a = AgentAlert { kind: "quiesce-failed".into(), message: "timed out".into() };
    a.check().unwrap();
    assert!(AgentAlert { kind: "other".into(), ..a.clone() }.check().is_err());
    assert!(AgentAlert { message: "x".repeat(2001), ..a.clone() }.check().is_err());
    assert!(serde_json::from_str::<AgentAlert>(r#"{"kind":"quiesce-failed"}"#).is_err());
}

#[test]
fn plans_are_shape_checked() {
    let act = |s: Option<&str>, p: Option<&str>, m: Option<&str>| PlanAction {
        script: s.map(Into::into),
        plugin: p.map(Into::into),
        manual: m.map(Into::into),
    };
    let group = |machines: &[&str], pre: Vec<PlanAction>| PlanGroup {
        machines: machines.iter().map(|m| m.to_string()).collect(),
        pre,
        post: vec![],
    };
    let good = Plan {
        groups: vec![
            group(&["a"], vec![act(Some("notify"), None, None)]),
            group(&["b", "c"], vec![act(None, None, Some("check the database"))]),
        ],
    };
    good.check().unwrap();
    let bad: Vec<(Plan, &str)> = vec![
        (Plan { groups: vec![] }, "groups"),
        (
            Plan { groups: vec![group(&["a"], vec![]), group(&["a"], vec![])] },
            "groups[1].machines[0]",
        ),
        (Plan { groups: vec![group(&[], vec![act(None, None, None)])] }, "groups[0].pre[0]"),
        (
            Plan { groups: vec![group(&[], vec![act(Some("x"), Some("y"), None)])] },
            "groups[0].pre[0]",
        ),
        (
            Plan { groups: vec![group(&[], vec![act(None, None, Some(" "))])] },
            "groups[0].pre[0].manual",
        ),
        (
            Plan { groups: vec![group(&[], vec![act(Some("../x"), None, None)])] },
            "groups[0].pre[0]",
        ),
    ];
    for (p, field) in bad {
        let e = p.check().expect_err(field);
        assert!(e.starts_with(field), "{field}: {e}");
    }
}

#[test]
fn policies_are_checked() {
    Policy::default().check().unwrap();
    let tiers = |t: &[(u64, u64)]| {
        Some(
            t.iter()
                .map(|&(every_secs, for_secs)| RetentionTier { every_secs, for_secs })
                .collect(),
        )
    };
    let good = Policy {
        retention: tiers(&[(0, 14_400), (3600, 86_400), (86_400, 604_800)]),
        ..Policy::default()
    };
    good.check().unwrap();
    let bad: Vec<(Policy, &str)> = vec![
        (Policy { rpo_warning_secs: 0, ..Policy::default() }, "rpo_warning_secs"),
        (Policy { rpo_critical_secs: 60, ..Policy::default() }, "rpo_critical_secs"),
        (Policy { silent_secs: u64::MAX, ..Policy::default() }, "silent_secs"),
        (Policy { crash_interval_secs: Some(0), ..Policy::default() }, "crash_interval_secs"),
        (Policy { compression_level: Some(23), ..Policy::default() }, "compression_level"),
        (Policy { app_interval_secs: Some(u64::MAX), ..Policy::default() }, "app_interval_secs"),
        (
            Policy {
                bandwidth: Some(PolicyBandwidth { mbps: Some(f64::NAN), schedule: vec![] }),
                ..Policy::default()
            },
            "bandwidth.mbps",
        ),
        (
            Policy {
                bandwidth: Some(PolicyBandwidth {
                    mbps: None,
                    schedule: vec![PolicyWindow {
                        days: None,
                        from: "25:00".into(),
                        to: "06:00".into(),
                        mbps: 1.0,
                    }],
                }),
                ..Policy::default()
            },
            "bandwidth.schedule[0].from",
        ),
        (
            Policy {
                bandwidth: Some(PolicyBandwidth {
                    mbps: None,
                    schedule: vec![PolicyWindow {
                        days: Some(vec!["moon".into()]),
                        from: "22:00".into(),
                        to: "06:00".into(),
                        mbps: 0.0,
                    }],
                }),
                ..Policy::default()
            },
            "bandwidth.schedule[0].days",
        ),
        (Policy { retention: tiers(&[]), ..Policy::default() }, "retention"),
        (Policy { retention: tiers(&[(0, 100); 9]), ..Policy::default() }, "retention"),
        (
            Policy { retention: tiers(&[(100, 100)]), ..Policy::default() },
            "retention[0].every_secs",
        ),
        (Policy { retention: tiers(&[(0, 0)]), ..Policy::default() }, "retention[0].for_secs"),
        (
            Policy { retention: tiers(&[(0, 100), (10, 50)]), ..Policy::default() },
            "retention[1].for_secs",
        ),
        (
            Policy { retention: tiers(&[(60, 100), (10, 500)]), ..Policy::default() },
            "retention[1].every_secs",
        ),
    ];
    for (p, field) in bad {
        let e = p.check().expect_err(field);
        assert!(e.starts_with(field), "{field}: {e}");
    }
    let p: Policy = serde_json::from_str("{}").unwrap();
    assert_eq!(p, Policy::default());
    assert!(serde_json::from_str::<Policy>(r#"{"rpo":5}"#).is_err());
}

#[test]
fn reverse_diffs_are_shape_checked() {
    let b = u64::from(REVERSE_BLOCK);
    let size = 10 * b + 512;
    let h = reverse_block_hash(&[0u8; 512]);
    assert_eq!(h.len(), 32);
    assert_ne!(h, reverse_block_hash(&[1u8; 512]));
    let ok = |offset, n| ReverseDiff { disk: 0, offset, hashes: vec![h.clone(); n] };
    ok(0, 11).check(size).unwrap();
    ok(10 * b, 1).check(size).unwrap();
    for (d, field) in [
        (ok(0, 0), "hashes"),
        (ok(0, REVERSE_MAX_BLOCKS + 1), "hashes"),
        (ok(0, 12), "hashes"),
        (ok(512, 1), "offset"),
        (ok(11 * b, 1), "offset"),
        (ReverseDiff { disk: 0, offset: 0, hashes: vec!["xyz".into()] }, "hashes[0]"),
        (ReverseDiff { disk: 0, offset: 0, hashes: vec!["g".repeat(32)] }, "hashes[0]"),
    ] {
        let e = d.check(size).expect_err(field);
        assert!(e.starts_with(field), "{field}: {e}");
    }
}

#[test]
fn system_info_is_range_checked() {
    system().check().unwrap();
    type Spoil = fn(&mut SystemInfo);
    let bad: Vec<(Spoil, &str)> = vec![
        (|s| s.firmware = "efi".into(), "system.firmware"),
        (|s| s.cpus = 0, "system.cpus"),
        (|s| s.memory_mib = 0, "system.memory_mib"),
        (|s| s.memory_mib = u64::MAX, "system.memory_mib"),
        (|s| s.nics[0].name = String::new(), "system.nics[0].name"),
        (|s| s.nics[0].name = "a\nb".into(), "system.nics[0].name"),
        (|s| s.nics[0].mac = "52:54:00:12:34".into(), "system.nics[0].mac"),
        (|s| s.nics[0].mac = "52:54:00:12:34:zz".into(), "system.nics[0].mac"),
        (|s| s.nics[0].addresses[0] = "192.0.2.10".into(), "system.nics[0].addresses[0]"),
        (|s| s.nics[0].addresses[1] = "2001:db8::5/129".into(), "system.nics[0].addresses[1]"),
        (|s| s.nics = vec![s.nics[0].clone(); MAX_NICS + 1], "system.nics"),
    ];
    for (f, field) in bad {
        let mut s = system();
        f(&mut s);
        let e = s.check().expect_err(field);
        assert!(e.starts_with(field), "{field}: {e}");
    }
    // A hello from an older agent (no system) still parses; unknown fields do not.
    let h: Hello = serde_json::from_str(r#"{"protocol_versions":[1],"disks":[]}"#).unwrap();
    assert!(h.system.is_none());
    assert!(
        serde_json::from_str::<Hello>(
            r#"{"protocol_versions":[1],"disks":[],"system":{"firmware":"bios","cpus":1,"memory_mib":1,"nics":[],"gpu":1}}"#
        )
        .is_err()
    );
}

fn report() -> ChurnReport {
    ChurnReport {
        seconds: 10.0,
        disks: vec![DiskChurn {
            index: 0,
            path: "/dev/sda".into(),
            mean_mb_per_s: 2.0,
            peak_mb_per_s: 5.0,
            mean_iops: 100.0,
            peak_iops: 300.0,
            sizes: [10, 0, 0, 0, 1],
            samples_mb_per_s: vec![1.0, 5.0],
            samples_iops: vec![50.0, 300.0],
        }],
    }
}

#[test]
fn churn_reports_are_range_checked() {
    assert!(report().check().is_ok());
    let bad = |f: fn(&mut ChurnReport), field: &str| {
        let mut r = report();
        f(&mut r);
        let e = r.check().unwrap_err();
        assert!(e.contains(field), "{e}");
    };
    bad(|r| r.seconds = 0.0, "seconds");
    bad(|r| r.seconds = f64::NAN, "seconds");
    bad(|r| r.disks.clear(), "disks");
    bad(|r| r.disks[0].peak_mb_per_s = -1.0, "disks[0].peak_mb_per_s");
    bad(|r| r.disks[0].mean_iops = f64::INFINITY, "disks[0].mean_iops");
    bad(|r| r.disks[0].samples_iops[1] = -3.0, "disks[0].samples_iops[1]");
    bad(|r| r.disks[0].samples_mb_per_s = vec![0.0; MAX_CHURN_SAMPLES + 1], "samples_mb_per_s");
    bad(|r| r.disks.push(r.disks[0].clone()), "appears twice");
    // Unknown fields and wrong types are refused by the parser.
    let mut v = serde_json::to_value(report()).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ChurnReport>(v).is_err());
    let mut v = serde_json::to_value(report()).unwrap();
    v["disks"][0]["sizes"] = serde_json::json!([1, 2]);
    assert!(serde_json::from_value::<ChurnReport>(v).is_err());
}

/// The answers the appliance still writes as literal JSON, and its jobs' results, decode
/// into their types (what `lifeboat` reads them as) and encode back the same.
#[test]
fn literal_answers_and_job_results_decode() {
    fn same<T: serde::Serialize + serde::de::DeserializeOwned>(text: &str) -> T {
        let t: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let want: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), want, "{text}");
        t
    }
    same::<Empty>("{}");
    assert!(same::<Revoked>(r#"{"revoked":true}"#).revoked);
    assert_eq!(same::<PassphraseStatus>(r#"{"unused":1}"#).unused, 1);
    let p = same::<NewPassphrase>(r#"{"passphrase":"horse-battery","dropped":2}"#);
    assert!(!format!("{p:?}").contains("horse"), "the passphrase stays out of logs");
    assert!(same::<Continued>(r#"{"continued":true,"step":1}"#).continued);
    let disk = r#"{"disk":0,"id":"tf3-m-d0","location":"/t/tf3-m-d0","instant":false}"#;
    let r = same::<TestFailoverResult>(&format!(
        r#"{{"test_failover":"tf3","vm":"tf3-m","point":"p1","disks":[{disk}]}}"#
    ));
    assert_eq!((r.test_failover.as_str(), r.disks[0].location.as_str()), ("tf3", "/t/tf3-m-d0"));
    let r = same::<FailoverResult>(&format!(
        r#"{{"machine":"m","vm":"fo-m","point":"p2","disks":[{disk}],"seconds":1.5}}"#
    ));
    assert_eq!(r.point, "p2");
    assert_eq!(same::<CommitResult>(r#"{"machine":"m","points_deleted":3}"#).points_deleted, 3);
    let r = same::<PlanResult>(r#"{"plan":"web","mode":"test-failover","log":["a","b"]}"#);
    assert_eq!(r.log, ["a", "b"]);
    assert!(
        serde_json::from_str::<CommitResult>(r#"{"machine":"m","points_deleted":3,"x":1}"#)
            .is_err()
    );
}

#[test]
fn appliance_identity_is_checked() {
    let id = |name: &str, url: &str| ApplianceIdentity { name: name.into(), agent_url: url.into() };
    for url in [
        "https://dr.example.com:9443",
        "https://dr.example.com",
        "https://192.0.2.7:9443/",
        "https://[2001:db8::7]:9443",
        "https://[::1]",
    ] {
        assert_eq!(id("dr-site-a", url).check(), Ok(()), "{url}");
    }
    for (name, url, field) in [
        ("", "https://a:9443", "name"),
        ("   ", "https://a:9443", "name"),
        ("a\u{7}b", "https://a:9443", "name"),
        (&"x".repeat(65), "https://a:9443", "name"),
        ("ok", "http://a:9443", "agent_url"),
        ("ok", "https://", "agent_url"),
        ("ok", "https://a:0", "agent_url"),
        ("ok", "https://a:65536", "agent_url"),
        ("ok", "https://a:x", "agent_url"),
        ("ok", "https://a:9443/path", "agent_url"),
        ("ok", "https://user@a:9443", "agent_url"),
        ("ok", "https://a b:9443", "agent_url"),
        ("ok", "https://-a:9443", "agent_url"),
        ("ok", "https://a..b:9443", "agent_url"),
        ("ok", "https://[not-v6]:9443", "agent_url"),
        ("ok", "https://a:9443?x=1", "agent_url"),
    ] {
        let e = id(name, url).check().unwrap_err();
        assert!(e.starts_with(field), "{name:?} {url:?}: {e}");
    }
}

#[test]
fn reprotect_requests_are_checked() {
    let ok = |j: &str| serde_json::from_str::<ReprotectRequest>(j).unwrap().check();
    assert!(ok("{}").is_ok());
    assert!(ok(r#"{"to":"vmware"}"#).is_ok());
    assert!(ok(r#"{"to":"vmware","vm_name":"web-01.fb","network":"VM Network"}"#).is_ok());
    assert!(ok(r#"{"to":"vmware","vm_name":"web","existing_vm":true}"#).is_ok());
    for (bad, field) in [
        (r#"{"vm_name":"x"}"#, "need `to`"),
        (r#"{"network":"x"}"#, "need `to`"),
        (r#"{"to":""}"#, "to:"),
        (r#"{"to":"../vmware"}"#, "to:"),
        (r#"{"to":"vmware","vm_name":""}"#, "vm_name:"),
        (r#"{"to":"vmware","vm_name":"-x"}"#, "vm_name:"),
        (r#"{"to":"vmware","vm_name":"a b"}"#, "vm_name:"),
        (r#"{"to":"vmware","vm_name":"a/b"}"#, "vm_name:"),
        (r#"{"to":"vmware","network":" x"}"#, "network:"),
        (r#"{"to":"vmware","network":"a\u0001"}"#, "network:"),
        (r#"{"existing_vm":true}"#, "need `to`"),
        (r#"{"to":"vmware","existing_vm":true}"#, "needs vm_name"),
        (r#"{"to":"vmware","vm_name":"web","existing_vm":true,"network":"n"}"#, "network:"),
    ] {
        let e = ok(bad).expect_err(bad);
        assert!(e.contains(field), "{bad}: {e}");
    }
    let long = format!(r#"{{"to":"vmware","vm_name":"{}"}}"#, "a".repeat(81));
    assert!(ok(&long).is_err());
    assert!(serde_json::from_str::<ReprotectRequest>(r#"{"to":"vmware","x":1}"#).is_err());
}
