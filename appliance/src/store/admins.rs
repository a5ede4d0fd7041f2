//! Administrators and their sessions.

use super::{CachedRow, Sqlite, State, StateError, now_ms};
use rusqlite::{OptionalExtension, params};

/// A live session: (token sha256, administrator, created if known, expires).
pub type SessionRow = (String, String, Option<u64>, u64);

super::backend_trait! {
    /// Administrators and their sessions.
    AdminStore {
        /// Creates the first administrator; false (nothing written) if one exists already.
        fn create_first_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError>;

        /// Whether any administrator exists.
        fn has_admin(&self) -> Result<bool, StateError>;

        /// An administrator's password hash.
        fn admin_hash(&self, name: &str) -> Result<Option<String>, StateError>;

        /// Records a session (by the token's sha256) and drops expired ones, only while the
        /// administrator still has `password_hash` (the one the login checked): false, and
        /// nothing recorded, if the password changed or the account went meanwhile.
        fn add_session(
            &self,
            token_sha256: &str,
            admin: &str,
            expires_unix_ms: u64,
            password_hash: &str,
        ) -> Result<bool, StateError>;

        /// The administrator and expiry of a live session.
        fn session(&self, token_sha256: &str) -> Result<Option<(String, u64)>, StateError>;

        /// Ends a session.
        fn delete_session(&self, token_sha256: &str) -> Result<(), StateError>;

        /// Administrators: (name, created), by name.
        fn admins(&self) -> Result<Vec<(String, u64)>, StateError>;

        /// Adds an administrator; false (nothing written) if the name is taken.
        fn add_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError>;

        /// Deletes an administrator and their sessions unless they are the last one:
        /// `None` if there is no such administrator, `Some(false)` if it is the last.
        fn delete_admin(&self, name: &str) -> Result<Option<bool>, StateError>;

        /// Sets an administrator's password hash and ends their sessions but `keep` (a
        /// token's sha256); false if there is no such administrator.
        fn set_admin_hash(
            &self,
            name: &str,
            password_hash: &str,
            keep: Option<&str>,
        ) -> Result<bool, StateError>;

        /// Live sessions: (token sha256, administrator, created if known, expires), newest
        /// first.
        fn sessions(&self) -> Result<Vec<SessionRow>, StateError>;
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
        password_hash: &str,
    ) -> Result<bool, StateError> {
        let c = self.conn();
        c.execute("DELETE FROM sessions WHERE expires_unix_ms <= ?1", params![now_ms() as i64])
            .map_err(|e| self.err(e))?;
        let n = c
            .execute(
                "INSERT INTO sessions (token_sha256, admin, expires_unix_ms, created_unix_ms)
                 SELECT ?1, ?2, ?3, ?4
                 WHERE EXISTS (SELECT 1 FROM admins WHERE name = ?2 AND password_hash = ?5)",
                params![
                    token_sha256,
                    admin,
                    expires_unix_ms as i64,
                    now_ms() as i64,
                    password_hash
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
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

    fn admins(&self) -> Result<Vec<(String, u64)>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT name, created_unix_ms FROM admins ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn add_admin(&self, name: &str, password_hash: &str) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO admins (name, password_hash, created_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, password_hash, now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn delete_admin(&self, name: &str) -> Result<Option<bool>, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let exists: i64 = tx
            .row_cached("SELECT COUNT(*) FROM admins WHERE name = ?1", params![name], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if exists == 0 {
            return Ok(None);
        }
        let all: i64 = tx
            .row_cached("SELECT COUNT(*) FROM admins", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if all <= 1 {
            return Ok(Some(false));
        }
        tx.execute("DELETE FROM admins WHERE name = ?1", params![name]).map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM sessions WHERE admin = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(true))
    }

    fn set_admin_hash(
        &self,
        name: &str,
        password_hash: &str,
        keep: Option<&str>,
    ) -> Result<bool, StateError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE admins SET password_hash = ?2 WHERE name = ?1",
                params![name, password_hash],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM sessions WHERE admin = ?1 AND token_sha256 != ?2",
            params![name, keep.unwrap_or("")],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn sessions(&self) -> Result<Vec<SessionRow>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT token_sha256, admin, created_unix_ms, expires_unix_ms FROM sessions
                 WHERE expires_unix_ms > ?1 ORDER BY expires_unix_ms DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map(params![now_ms() as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
