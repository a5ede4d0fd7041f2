//! The administrative subcommands besides `run`.

use lifeboat_appliance::config::ApplianceConfig;
use lifeboat_appliance::logobj::{disk_id, parse_disk_id};
use lifeboat_appliance::store::State;
use lifeboat_plugin_host::TargetInstance;
use lifeboat_wire::MachineId;
use sha2::{Digest, Sha256};

/// `passphrase`: a new one-time registration passphrase.
pub fn passphrase(config: ApplianceConfig) -> anyhow::Result<()> {
    crate::run::make_private(&config)?;
    let state = State::open(&config.data_dir.join("state.db"))?;
    println!("{}", lifeboat_appliance::config_server::new_passphrase(&state)?);
    Ok(())
}

/// `setup-token`: the one-time token of the first-run setup.
pub fn setup_token(config: ApplianceConfig) -> anyhow::Result<()> {
    crate::run::make_private(&config)?;
    let state = State::open(&config.data_dir.join("state.db"))?;
    match lifeboat_appliance::config_server::admin::setup_token(&state)? {
        Some(t) => {
            println!("{t}");
            Ok(())
        }
        None => anyhow::bail!("setup is done: this appliance has an administrator; log in"),
    }
}

/// `fingerprint`: the CA fingerprint agents pin.
pub fn fingerprint(config: ApplianceConfig) -> anyhow::Result<()> {
    crate::run::make_private(&config)?;
    let ca =
        lifeboat_net::Ca::load_or_create(&config.data_dir.join("ca"), "Lifeboat appliance CA")?;
    println!("{}", ca.fingerprint());
    Ok(())
}

/// `points`: recovery points as JSON lines.
pub fn points(config: ApplianceConfig, machine: Option<MachineId>) -> anyhow::Result<()> {
    let state = State::open(&config.data_dir.join("state.db"))?;
    let machines = match machine {
        Some(m) => vec![m],
        None => state.machine_ids()?,
    };
    for m in machines {
        for p in state.points(m)? {
            println!(
                "{}",
                serde_json::json!({"machine": m.to_string(), "id": p.id, "point": p.point, "kind": p.kind,
                    "created_unix_ms": p.created_unix_ms, "disks": p.disks})
            );
        }
    }
    Ok(())
}

/// `churn`: the write-churn profiles agents reported, one JSON object per line, each with
/// what it takes to keep up: the link bandwidth before compression (mean and peak, in
/// megabits per second, summed over the machine's disks) and, given `link_mbps`, whether
/// the peak fits. Compression usually shrinks what crosses the link (the replication bench
/// measured a wire ratio of 0.20 on mixed data), so the uncompressed figure is the safe one.
pub fn churn(
    config: ApplianceConfig,
    machine: Option<MachineId>,
    link_mbps: Option<f64>,
) -> anyhow::Result<()> {
    let state = State::open(&config.data_dir.join("state.db"))?;
    for (m, at, text) in state.churn(machine)? {
        let r: lifeboat_api::ChurnReport = serde_json::from_str(&text)?;
        let mean: f64 = r.disks.iter().map(|d| d.mean_mb_per_s).sum::<f64>() * 8.0;
        let peak: f64 = r.disks.iter().map(|d| d.peak_mb_per_s).sum::<f64>() * 8.0;
        let daily_gb = r.disks.iter().map(|d| d.mean_mb_per_s).sum::<f64>() * 86_400.0 / 1000.0;
        let fits = link_mbps.map(|l| peak <= l);
        println!(
            "{}",
            serde_json::json!({"machine": m.to_string(), "reported_unix_ms": at, "seconds": r.seconds,
                "needs_mbit_per_s_mean": mean, "needs_mbit_per_s_peak": peak,
                "churn_gb_per_day": daily_gb, "fits_link": fits, "disks": r.disks})
        );
    }
    Ok(())
}

/// `group-points`: consistency-group points as JSON lines. A group point is `complete`
/// when every member's point with that number is at the target; only then is it a point
/// the group can fail over to.
pub fn group_points(config: ApplianceConfig, group: Option<&str>) -> anyhow::Result<()> {
    let state = State::open(&config.data_dir.join("state.db"))?;
    for g in state.group_points(group)? {
        let mut ids = Vec::new();
        for m in &g.members {
            ids.push(state.points(*m)?.into_iter().find(|p| p.point == g.point).map(|p| p.id));
        }
        let complete = ids.iter().all(Option::is_some);
        println!(
            "{}",
            serde_json::json!({"group": g.group, "point": g.point, "members": g.members.iter().map(MachineId::to_string).collect::<Vec<_>>(),
                "point_ids": ids, "complete": complete, "created_unix_ms": g.created_unix_ms})
        );
    }
    Ok(())
}

/// An instance of the master target's target plugin.
async fn master_target_instance(core: &crate::run::Core) -> anyhow::Result<TargetInstance> {
    let name = &lifeboat_appliance::config_server::targets::chosen(
        &core.state,
        &core.config.master_target.target,
    );
    let plugin = core
        .registry
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("target plugin {name:?} is not loaded"))?;
    Ok(TargetInstance::new(plugin).await?)
}

/// `point-checksum`: sha256 of a disk at a point, read back through the target plugin.
pub async fn point_checksum(config: ApplianceConfig, point: &str, disk: u32) -> anyhow::Result<()> {
    let core = crate::run::open_core(config)?;
    let mut t = master_target_instance(&core).await?;
    let (machine, _) = point
        .rsplit_once("-p")
        .and_then(|(m, _)| parse_disk_id(&format!("{m}-d0")))
        .ok_or_else(|| anyhow::anyhow!("{point:?} is not a point id"))?;
    let source = disk_id(machine, disk);
    let copy = format!("{source}-verify{}", std::process::id());
    let m = t.materialize(point, &source, &copy).await?;
    let size = t
        .list_disks()
        .await?
        .into_iter()
        .find(|d| d.id == copy)
        .map(|d| d.size)
        .ok_or_else(|| anyhow::anyhow!("materialised disk {copy} not listed"))?;
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(4 << 20) as u32;
        h.update(t.read_extent(&copy, off, n).await?);
        off += u64::from(n);
    }
    t.delete_disk(&copy).await?;
    println!("{}  {} (instant: {})", hex::encode(h.finalize()), m.location, m.instant);
    Ok(())
}

/// `stats`: the appliance's counters as one JSON object.
pub fn stats(config: ApplianceConfig) -> anyhow::Result<()> {
    let state = State::open(&config.data_dir.join("state.db"))?;
    let map: serde_json::Map<String, serde_json::Value> =
        state.counters()?.into_iter().map(|(k, v)| (k, serde_json::json!(v))).collect();
    println!("{}", serde_json::Value::Object(map));
    Ok(())
}

/// `lifeboat-appliance recover`: reads the catalogue the lost appliance kept at the target
/// (sealed under the recovery passphrase, from `LIFEBOAT_RECOVERY_PASSPHRASE` or the first
/// line of standard input) and, unless `dry_run`, imports it into this fresh appliance.
/// Prints a summary (JSON): machines with their newest point.
pub async fn recover(config: ApplianceConfig, dry_run: bool) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let passphrase = match std::env::var("LIFEBOAT_RECOVERY_PASSPHRASE") {
        Ok(p) => p,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if passphrase.is_empty() {
        anyhow::bail!(
            "no recovery passphrase: set LIFEBOAT_RECOVERY_PASSPHRASE or give it on standard input"
        );
    }
    let data_dir = config.data_dir.clone();
    let core = crate::run::open_core(config)?;
    let mut t = master_target_instance(&core).await?;
    let sealed = t.get_log(lifeboat_appliance::master_target::catalogue::OBJECT).await.map_err(|e| {
        anyhow::anyhow!(
            "no catalogue at the target ({e}): was a recovery passphrase set on the lost appliance?"
        )
    })?;
    let pass = passphrase.clone();
    let c = tokio::task::spawn_blocking(move || {
        lifeboat_appliance::master_target::catalogue::open(&pass, &sealed)
    })
    .await??;
    let summary: Vec<serde_json::Value> = c
        .machines
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "hostname": m.hostname, "disks": m.disks.len(),
                "points": m.points.len(), "newest_point": m.points.last().map(|p| &p.id),
            })
        })
        .collect();
    if !dry_run {
        lifeboat_appliance::master_target::catalogue::import(
            &core.state,
            &data_dir.join("keys"),
            &c,
        )?;
        // This appliance keeps the catalogue at the target sealed under the same passphrase.
        tokio::task::spawn_blocking(move || {
            lifeboat_appliance::master_target::catalogue::Sealer::new(&passphrase)?.store(&data_dir)
        })
        .await??;
    }
    println!(
        "{}",
        serde_json::json!({"written_unix_ms": c.written_unix_ms, "imported": !dry_run, "machines": summary})
    );
    Ok(())
}
