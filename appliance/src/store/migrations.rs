//! Schema migrations of the state database.

/// Schema migrations, in order. Never edit a published one; append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: replication core.
    "CREATE TABLE machines (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        registered_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE passphrases (
        hash TEXT PRIMARY KEY,
        created_unix_ms INTEGER NOT NULL,
        used_unix_ms INTEGER,
        machine_id TEXT
     );
     CREATE TABLE disks (
        machine_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        size INTEGER NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (machine_id, idx)
     );
     CREATE TABLE received (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        next_sequence INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk)
     );
     CREATE TABLE applied (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        next_sequence INTEGER NOT NULL,
        point_reached INTEGER,
        PRIMARY KEY (machine_id, disk)
     );
     CREATE TABLE points (
        id TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        point INTEGER NOT NULL,
        kind TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        disks TEXT NOT NULL
     );
     CREATE TABLE progress (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        phase TEXT NOT NULL,
        done_bytes INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        sent_bytes INTEGER NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk)
     );",
    // 2: counters for the status API, tests and benchmarks.
    "CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );",
    // 3: the kind (crash, app) of the tag a disk reached, so the point gets it.
    "ALTER TABLE applied ADD COLUMN point_kind TEXT;",
    // 4: consistency-group points, recorded by the group's coordinator.
    "CREATE TABLE group_points (
        group_name TEXT NOT NULL,
        point INTEGER NOT NULL,
        members TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (group_name, point)
     );",
    // 5: write-churn profiles reported by agents (`lifeboat-agent churn --report`).
    "CREATE TABLE churn (
        machine_id TEXT NOT NULL,
        reported_unix_ms INTEGER NOT NULL,
        report TEXT NOT NULL
     );",
    // 6: administrators and their sessions (tokens are stored as sha256).
    "CREATE TABLE admins (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        token_sha256 TEXT PRIMARY KEY,
        admin TEXT NOT NULL,
        expires_unix_ms INTEGER NOT NULL
     );",
    // 7: revoked machines: their certificates are refused from then on.
    "ALTER TABLE machines ADD COLUMN revoked_unix_ms INTEGER;",
    // 8: asynchronous jobs, and test failovers until they are cleaned up.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        machine_id TEXT,
        state TEXT NOT NULL,
        progress REAL NOT NULL,
        message TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        finished_unix_ms INTEGER,
        result TEXT
     );
     CREATE TABLE test_failovers (
        id TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        point_id TEXT NOT NULL,
        vm TEXT NOT NULL,
        disks TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        cleaned_unix_ms INTEGER
     );",
    // 9: what agents report of their machines, the administrator's VM settings, and
    // failovers (one per machine: its current one).
    "CREATE TABLE machine_facts (
        machine_id TEXT PRIMARY KEY,
        system TEXT NOT NULL,
        updated_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE vm_settings (
        machine_id TEXT PRIMARY KEY,
        settings TEXT NOT NULL
     );
     CREATE TABLE failovers (
        machine_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        point_id TEXT,
        vm TEXT,
        disks TEXT NOT NULL,
        job INTEGER NOT NULL,
        started_unix_ms INTEGER NOT NULL,
        committed_unix_ms INTEGER
     );",
    // 10: reverse replication (reprotect → failback): passes done by the original
    // machine's agent, the final pass failback asks for, and where the agent's numbering
    // stands once it is done.
    "CREATE TABLE reverse_sync (
        machine_id TEXT PRIMARY KEY,
        passes INTEGER NOT NULL,
        final_requested INTEGER NOT NULL,
        final_done INTEGER NOT NULL,
        done_bytes INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        received_bytes INTEGER NOT NULL,
        last_received_bytes INTEGER NOT NULL,
        next_sequences TEXT,
        final_started INTEGER NOT NULL DEFAULT 0,
        source_disks TEXT,
        updated_unix_ms INTEGER NOT NULL
     );",
    // 11: appliance-wide values (when the catalogue was last written at the target, …).
    "CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
    // 12: replication policies, each machine's policy, and when its agent was last heard.
    "CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        policy TEXT NOT NULL
     );
     ALTER TABLE machines ADD COLUMN policy TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE machines ADD COLUMN last_seen_unix_ms INTEGER;",
    // 13: each machine's current certificate: the CA that signed it, its expiry, its hash.
    "ALTER TABLE machines ADD COLUMN cert_ca TEXT;
     ALTER TABLE machines ADD COLUMN cert_not_after_unix_ms INTEGER;
     ALTER TABLE machines ADD COLUMN cert_sha256 TEXT;
     ALTER TABLE machines ADD COLUMN cert_prev_sha256 TEXT;
     ALTER TABLE machines ADD COLUMN trust_bundle_sha256 TEXT;",
    // 14: recovery plans.
    "CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        plan TEXT NOT NULL
     );",
    // 15: problems of one disk (its logs cannot be applied, it shrank, its cursor is
    // stuck behind a gap), each an alert naming the disk until it clears.
    "CREATE TABLE disk_alerts (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        since_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (machine_id, disk, kind)
     );",
    // 16: comparisons of a disk with its replica the master target asked for (logs of the
    // disk were missing at the target), until the point that makes the replica whole.
    "CREATE TABLE compares (
        machine_id TEXT NOT NULL,
        disk INTEGER NOT NULL,
        token INTEGER NOT NULL,
        requested_unix_ms INTEGER NOT NULL,
        done_point INTEGER,
        PRIMARY KEY (machine_id, disk)
     );",
    // 17: consistency groups as the administrator defines them (the appliance owns
    // membership), and each member's own report of the group points it recorded.
    "CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        coordinator TEXT NOT NULL,
        members TEXT NOT NULL
     );
     CREATE TABLE group_member_points (
        group_name TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        point INTEGER NOT NULL,
        PRIMARY KEY (group_name, machine_id, point)
     );",
    // 18: each machine's history for the UI's plots: a sample every `sample_secs` (RPO, bytes
    // received, backlog), thinned to one per hour after 7 days and dropped after 90.
    "CREATE TABLE samples (
        machine_id TEXT NOT NULL,
        unix_ms INTEGER NOT NULL,
        span_secs INTEGER NOT NULL,
        rpo_secs INTEGER,
        received_bytes INTEGER NOT NULL,
        backlog_batches INTEGER NOT NULL,
        PRIMARY KEY (machine_id, unix_ms)
     ) WITHOUT ROWID;",
    // 19: a machine's points and churn reports are found without reading every row (the
    // machines list and the alerts ask for each machine's newest).
    "CREATE INDEX points_by_machine ON points (machine_id, point);
     CREATE INDEX churn_by_machine ON churn (machine_id, reported_unix_ms);",
    // 20: a plugin's settings as the administrator set them from the API or web UI (they
    // replace the grant's settings of the configuration file); a secret's value is sealed
    // with the active data key (`crate::config_server::targets`).
    "CREATE TABLE plugin_settings (
        plugin TEXT NOT NULL,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        sealed INTEGER NOT NULL,
        PRIMARY KEY (plugin, name)
     ) WITHOUT ROWID;",
    // 21: builds of plugins an administrator trusted from the API (an uploaded plugin moved
    // from quarantine into the plugins directory): the pin replaces the grant's sha256.
    "CREATE TABLE plugin_pins (
        plugin TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        pinned_by TEXT NOT NULL,
        pinned_unix_ms INTEGER NOT NULL
     );",
    // 22: when each administrator session began (for the sessions list).
    "ALTER TABLE sessions ADD COLUMN created_unix_ms INTEGER;",
    // 23: reverse replication into another target (reprotect `to`): where failback makes
    // the VM (`lifeboat_api::ReprotectDestination`, JSON); NULL: the original machine.
    "ALTER TABLE reverse_sync ADD COLUMN destination TEXT;",
];
