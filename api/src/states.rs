//! The states and kinds the appliance records and the API reports, as enums: one
//! definition for the store (with the `rusqlite` feature, they are SQL values), the API
//! and its clients. Each is written as its kebab-case name, in JSON and in the database.

use serde::{Deserialize, Serialize};

/// Defines a string enum: serde, Display, FromStr, its names, and (feature `rusqlite`)
/// SQL conversion. Each name must be its variant's in kebab case (serde and the OpenAPI
/// schema derive it so; the test below checks they agree).
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vm])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Its name, as written in JSON and in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownName { what: stringify!($name), name: s.to_owned() }),
                }
            }
        }

        #[cfg(feature = "rusqlite")]
        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        #[cfg(feature = "rusqlite")]
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: UnknownName| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

/// A name that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// The enum.
    pub what: &'static str,
    /// The name that was given.
    pub name: String,
}

string_enum! {
    /// Where a machine's failover stands.
    FailoverState {
        /// The VM is being made.
        FailingOver = "failing-over",
        /// The VM runs; the point may still be changed, or the failover committed.
        FailedOver = "failed-over",
        /// Making the VM failed; the failover may be tried again.
        FailoverFailed = "failover-failed",
        /// The other points are being given up.
        Committing = "committing",
        /// Committed: the VM is the machine now.
        Committed = "committed",
        /// Reverse replication: waiting for the original machine's agent, or its first pass.
        Reprotecting = "reprotecting",
        /// The original disks are written from the failed-over ones.
        Reprotected = "reprotected",
        /// The failed-over VM is stopped and the last changes go back.
        FailingBack = "failing-back",
    }
}

impl FailoverState {
    /// The states in which reverse replication runs (the original machine's agent is
    /// written from the failed-over disks).
    pub const REVERSE: &'static [FailoverState] =
        &[FailoverState::Reprotecting, FailoverState::Reprotected, FailoverState::FailingBack];

    /// Whether the failover may be (re)done from this state: a VM was made (the point
    /// may be changed) or making one failed.
    pub fn may_fail_over_again(self) -> bool {
        matches!(self, FailoverState::FailedOver | FailoverState::FailoverFailed)
    }
}

string_enum! {
    /// Where the web UI's first-boot setup wizard stands: the step to show next. A wizard
    /// left half way resumes there.
    WizardStep {
        /// The first administrator, with the setup token (no administrator exists).
        Claim = "claim",
        /// The appliance's name and the address agents send to.
        Identity = "identity",
        /// The target plugin and its settings.
        Target = "target",
        /// The default protection policy and the recovery passphrase.
        Protection = "protection",
        /// How to register agents.
        Machines = "machines",
        /// Setup is finished: the dashboard.
        Done = "done",
    }
}

string_enum! {
    /// What a job does.
    JobKind {
        /// A test failover: a VM from a point, replication untouched.
        TestFailover = "test-failover",
        /// Removing a test failover's VM and disks.
        TestFailoverCleanup = "test-failover-cleanup",
        /// A failover.
        Failover = "failover",
        /// Committing a failover.
        Commit = "commit",
        /// Reverse replication to the original machine.
        Reprotect = "reprotect",
        /// Failing back to the original machine.
        Failback = "failback",
        /// A recovery plan's run.
        Plan = "plan",
        /// Installing the agent on a machine over SSH (push install).
        Install = "install",
    }
}

string_enum! {
    /// Where a job stands.
    JobState {
        /// Still working.
        Running = "running",
        /// Done, with a result.
        Succeeded = "succeeded",
        /// Ended with an error (its message says why).
        Failed = "failed",
    }
}

string_enum! {
    /// How consistent a recovery point is.
    PointKind {
        /// Crash-consistent: the disks as a power cut would leave them.
        Crash = "crash",
        /// Application-consistent: taken while the applications were quiesced.
        App = "app",
    }
}

string_enum! {
    /// A problem of one disk the appliance watches.
    DiskAlertKind {
        /// Applying its logs to the replica fails.
        ApplyFailed = "apply-failed",
        /// The agent reported it smaller than its replica.
        DiskShrunk = "disk-shrunk",
        /// Its master-target cursor waits for a log that is not at the target.
        CursorStuck = "cursor-stuck",
    }
}

/// A job's number (`GET /api/v1/jobs/{id}`): one sequence for every kind of job.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = u64)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

#[cfg(feature = "rusqlite")]
impl rusqlite::types::ToSql for JobId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        // Row ids are below 2^63.
        Ok(rusqlite::types::ToSqlOutput::from(self.0 as i64))
    }
}

#[cfg(feature = "rusqlite")]
impl rusqlite::types::FromSql for JobId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let n = v.as_i64()?;
        u64::try_from(n).map(JobId).map_err(|_| rusqlite::types::FromSqlError::OutOfRange(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_unknown_names_are_refused() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + std::fmt::Display
                + std::str::FromStr
                + Serialize
                + PartialEq
                + std::fmt::Debug,
            <T as std::str::FromStr>::Err: std::fmt::Debug,
        {
            for v in all {
                assert_eq!(v.to_string().parse::<T>().unwrap(), *v);
                assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{v}\""));
            }
        }
        check(FailoverState::ALL);
        check(JobKind::ALL);
        check(JobState::ALL);
        check(PointKind::ALL);
        check(DiskAlertKind::ALL);
        check(WizardStep::ALL);
        let e = "failed over".parse::<FailoverState>().unwrap_err();
        assert_eq!(e.to_string(), "unknown FailoverState \"failed over\"");
        assert!(serde_json::from_str::<JobState>("\"done\"").is_err());
        assert!("App".parse::<PointKind>().is_err(), "names are case-sensitive");
    }
}
