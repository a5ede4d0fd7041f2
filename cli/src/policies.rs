//! Replication policies (list, set, delete, assign to a machine) and the alerts they raise.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session, fail};
use crate::{Cli, PolicyCmd};

/// `lifeboat policy …`.
pub fn policy(cli: &Cli, cmd: &PolicyCmd) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    let v: api::PolicyList = match cmd {
        PolicyCmd::List => s.get("/api/v1/policies")?,
        PolicyCmd::Set { name, .. } => {
            s.send(Method::PUT, &format!("/api/v1/policies/{name}"), &policy_body(cmd)?)?
        }
        PolicyCmd::Delete { name } => s.ask(Method::DELETE, &format!("/api/v1/policies/{name}"))?,
        PolicyCmd::Assign { machine, policy } => s.send(
            Method::PUT,
            &format!("/api/v1/machines/{machine}/policy"),
            &api::PolicyAssignment { policy: policy.clone() },
        )?,
    };
    let t = v
        .policies
        .iter()
        .map(|p| {
            let q = &p.policy;
            let retention = match &q.retention {
                Some(tiers) => tiers
                    .iter()
                    .map(|t| format!("{}s:{}s", t.every_secs, t.for_secs))
                    .collect::<Vec<_>>()
                    .join(","),
                None => "appliance default".into(),
            };
            format!(
                "{}  rpo {}s/{}s  silent {}s  retention {retention}  machines {}",
                p.name,
                q.rpo_warning_secs,
                q.rpo_critical_secs,
                q.silent_secs,
                p.machines.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}

/// The policy `lifeboat policy set` gives: its options over the defaults (what the
/// appliance takes for a field left out).
fn policy_body(cmd: &PolicyCmd) -> Result<api::Policy, Failure> {
    let PolicyCmd::Set {
        name: _,
        rpo_warning,
        rpo_critical,
        silent,
        crash_interval,
        compression_level,
        app_interval,
        bandwidth_mbps,
        encryption,
        retention,
    } = cmd
    else {
        unreachable!("only for policy set")
    };
    let secs = |v: &Option<String>| v.as_deref().map(parse_secs).transpose();
    let mut p = api::Policy::default();
    if let Some(s) = secs(rpo_warning)? {
        p.rpo_warning_secs = s;
    }
    if let Some(s) = secs(rpo_critical)? {
        p.rpo_critical_secs = s;
    }
    if let Some(s) = secs(silent)? {
        p.silent_secs = s;
    }
    p.crash_interval_secs = secs(crash_interval)?;
    p.app_interval_secs = secs(app_interval)?;
    p.compression_level = *compression_level;
    p.bandwidth = bandwidth_mbps.map(|m| api::PolicyBandwidth { mbps: Some(m), schedule: vec![] });
    p.encryption = match encryption.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(other) => return Err(fail(2, format!("--encryption: {other:?} is not on or off"))),
    };
    if let Some(r) = retention {
        let mut tiers = Vec::new();
        for pair in r.split(',') {
            let (every, upto) = pair
                .split_once(':')
                .ok_or_else(|| fail(2, format!("--retention: {pair:?} is not EVERY:FOR")))?;
            tiers.push(api::RetentionTier {
                every_secs: parse_secs(every)?,
                for_secs: parse_secs(upto)?,
            });
        }
        p.retention = Some(tiers);
    }
    Ok(p)
}

/// Seconds from `90`, `90s`, `15m`, `4h` or `7d`.
fn parse_secs(s: &str) -> Result<u64, Failure> {
    let bad = || fail(2, format!("{s:?} is not a duration (like 90, 90s, 15m, 4h, 7d)"));
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

/// `lifeboat alerts`: the alerts that hold now.
pub fn alerts(cli: &Cli) -> Result<Output, Failure> {
    let v: api::AlertList = Session::load(cli)?.get("/api/v1/alerts")?;
    let t = if v.alerts.is_empty() {
        "no alerts".into()
    } else {
        v.alerts
            .iter()
            .map(|a| format!("{:<8} {:<12} {}", a.severity, a.kind, a.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(Output::new(&v, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_secs("90").unwrap(), 90);
        assert_eq!(parse_secs("90s").unwrap(), 90);
        assert_eq!(parse_secs("15m").unwrap(), 900);
        assert_eq!(parse_secs("4h").unwrap(), 14_400);
        assert_eq!(parse_secs("7d").unwrap(), 604_800);
        for bad in ["", "h", "4x", "-1", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_secs(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    fn set(args: &[&str]) -> Result<api::Policy, Failure> {
        use clap::Parser as _;
        let all = [&["lifeboat", "policy", "set", "p"][..], args].concat();
        match crate::Cli::try_parse_from(all).unwrap().cmd {
            crate::Cmd::Policy { cmd } => policy_body(&cmd),
            _ => unreachable!(),
        }
    }

    #[test]
    fn policy_options_fill_the_policy() {
        assert_eq!(set(&[]).unwrap(), api::Policy::default(), "nothing given: the defaults");
        let p = set(&[
            "--rpo-warning",
            "1m",
            "--rpo-critical",
            "2m",
            "--silent",
            "90",
            "--crash-interval",
            "5m",
            "--app-interval",
            "1h",
            "--compression-level",
            "-3",
            "--bandwidth-mbps",
            "800",
            "--encryption",
            "off",
            "--retention",
            "0:4h,1h:24h",
        ])
        .unwrap();
        assert_eq!((p.rpo_warning_secs, p.rpo_critical_secs, p.silent_secs), (60, 120, 90));
        assert_eq!((p.crash_interval_secs, p.app_interval_secs), (Some(300), Some(3600)));
        assert_eq!((p.compression_level, p.encryption), (Some(-3), Some(false)));
        assert_eq!(p.bandwidth.unwrap().mbps, Some(800.0));
        let tiers = p.retention.unwrap();
        assert_eq!((tiers[1].every_secs, tiers[1].for_secs), (3600, 86_400));
        assert_eq!(set(&["--encryption", "maybe"]).unwrap_err().code, 2);
        assert_eq!(set(&["--retention", "1h"]).unwrap_err().code, 2);
        assert_eq!(set(&["--silent", "soon"]).unwrap_err().code, 2);
    }
}
