//! The certificates issued to each machine and the trust answer last given to it.

use super::{CachedRow, Sqlite, State, StateError};
use lifeboat_wire::MachineId;
use rusqlite::{OptionalExtension, params};

/// A machine's certificates: (signing CA of the current one, current sha256, previous
/// sha256 still accepted).
pub type MachineCerts = (Option<String>, Option<String>, Option<String>);

super::backend_trait! {
    /// Machine certificates and trust.
    CertStore {
        /// Records a certificate just issued to the machine; the one it had stays accepted
        /// until the new one is seen in use (a lost renewal answer must not lock it out).
        fn set_machine_cert(
            &self,
            machine_id: MachineId,
            ca_fingerprint: &str,
            not_after_unix_ms: u64,
            cert_sha256: &str,
        ) -> Result<(), StateError>;

        /// The machine presented its current certificate: the previous one is refused now.
        fn machine_cert_in_use(&self, machine_id: MachineId) -> Result<(), StateError>;

        /// The machine's certificates as (signing CA of the current one, current sha256,
        /// previous sha256 still accepted).
        fn machine_certs(&self, machine_id: MachineId) -> Result<MachineCerts, StateError>;

        /// The machine's current certificate as (signing CA fingerprint, sha256), if recorded.
        fn machine_cert(
            &self,
            machine_id: MachineId,
        ) -> Result<(Option<String>, Option<String>), StateError>;

        /// Records the sha256 of the trust bundle last sent to the machine's agent.
        fn set_machine_trust(
            &self,
            machine_id: MachineId,
            bundle_sha256: &str,
        ) -> Result<(), StateError>;

        /// The sha256 of the trust bundle last sent to the machine's agent.
        fn machine_trust(&self, machine_id: MachineId) -> Result<Option<String>, StateError>;

        /// The machine's certificate expiry, if recorded.
        fn machine_cert_expiry(&self, machine_id: MachineId) -> Result<Option<u64>, StateError>;
    }
}

impl CertStore for Sqlite {
    fn set_machine_cert(
        &self,
        machine_id: MachineId,
        ca_fingerprint: &str,
        not_after_unix_ms: u64,
        cert_sha256: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET cert_ca = ?2,
                     cert_not_after_unix_ms = CASE WHEN ?3 > 0 THEN ?3 ELSE cert_not_after_unix_ms END,
                     cert_prev_sha256 = CASE WHEN cert_sha256 = ?4 THEN cert_prev_sha256 ELSE cert_sha256 END,
                     cert_sha256 = ?4 WHERE id = ?1",
                params![machine_id, ca_fingerprint, not_after_unix_ms as i64, cert_sha256],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn machine_cert_in_use(&self, machine_id: MachineId) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET cert_prev_sha256 = NULL
                 WHERE id = ?1 AND cert_prev_sha256 IS NOT NULL",
                params![machine_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn machine_certs(&self, machine_id: MachineId) -> Result<MachineCerts, StateError> {
        self.read()
            .row_cached(
                "SELECT cert_ca, cert_sha256, cert_prev_sha256 FROM machines WHERE id = ?1",
                params![machine_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(e))
    }

    fn machine_cert(
        &self,
        machine_id: MachineId,
    ) -> Result<(Option<String>, Option<String>), StateError> {
        let (ca, sha, _) = self.machine_certs(machine_id)?;
        Ok((ca, sha))
    }

    fn set_machine_trust(
        &self,
        machine_id: MachineId,
        bundle_sha256: &str,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE machines SET trust_bundle_sha256 = ?2 WHERE id = ?1",
                params![machine_id, bundle_sha256],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn machine_trust(&self, machine_id: MachineId) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached(
                "SELECT trust_bundle_sha256 FROM machines WHERE id = ?1",
                params![machine_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    fn machine_cert_expiry(&self, machine_id: MachineId) -> Result<Option<u64>, StateError> {
        self.read()
            .row_cached(
                "SELECT cert_not_after_unix_ms FROM machines WHERE id = ?1",
                params![machine_id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(|o| o.flatten().map(|v| v as u64))
            .map_err(|e| self.err(e))
    }
}
