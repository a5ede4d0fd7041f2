//! Administrators and their sessions.

use super::{CachedRow, Sqlite, State, StateError, now_ms};
use rusqlite::{OptionalExtension, params};

super::backend_trait! {
    /// Administrators and their sessions.
    AdminStore {
        /// Creates the first administrator; false (nothing written) if one exists already.
        fn create_first_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError>;

        /// Whether any administrator exists.
        fn has_admin(&self) -> Result<bool, StateError>;

        /// An administrator's password hash.
        fn admin_hash(&self, name: &str) -> Result<Option<String>, StateError>;

        /// Records a session (by the token's sha256) and drops expired ones.
        fn add_session(
            &self,
            token_sha256: &str,
            admin: &str,
            expires_unix_ms: u64,
        ) -> Result<(), StateError>;

        /// The administrator and expiry of a live session.
        fn session(&self, token_sha256: &str) -> Result<Option<(String, u64)>, StateError>;

        /// Ends a session.
        fn delete_session(&self, token_sha256: &str) -> Result<(), StateError>;
    }
}

impl AdminStore for Sqlite {
    fn create_first_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let n: i64 = tx
            .row_cached("SELECT COUNT(*) FROM admins", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if n > 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO admins (name, password_hash, created_unix_ms) VALUES (?1, ?2, ?3)",
            params![name, password_hash, now_ms() as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn has_admin(&self) -> Result<bool, StateError> {
        let n: i64 = self
            .conn()
            .row_cached("SELECT COUNT(*) FROM admins", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn admin_hash(&self, name: &str) -> Result<Option<String>, StateError> {
        self.read()
            .row_cached("SELECT password_hash FROM admins WHERE name = ?1", params![name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    fn add_session(
        &self,
        token_sha256: &str,
        admin: &str,
        expires_unix_ms: u64,
    ) -> Result<(), StateError> {
        let c = self.conn();
        c.execute("DELETE FROM sessions WHERE expires_unix_ms <= ?1", params![now_ms() as i64])
            .map_err(|e| self.err(e))?;
        c.execute(
            "INSERT INTO sessions (token_sha256, admin, expires_unix_ms) VALUES (?1, ?2, ?3)",
            params![token_sha256, admin, expires_unix_ms as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn session(&self, token_sha256: &str) -> Result<Option<(String, u64)>, StateError> {
        self.read()
            .row_cached(
                "SELECT admin, expires_unix_ms FROM sessions WHERE token_sha256 = ?1 AND expires_unix_ms > ?2",
                params![token_sha256, now_ms() as i64],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn delete_session(&self, token_sha256: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE token_sha256 = ?1", params![token_sha256])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
