//! Recovery points and consistency groups with their points.

use super::{CachedRow, Sqlite, State, StateError, now_ms};
use lifeboat_api::PointKind;
use lifeboat_wire::MachineId;
use rusqlite::params;

/// A recovery point row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRow {
    /// Point id at the target.
    pub id: String,
    /// Machine.
    pub machine_id: MachineId,
    /// Agent's point number.
    pub point: u64,
    /// How consistent it is.
    pub kind: PointKind,
    /// Creation time.
    pub created_unix_ms: u64,
    /// Disk indexes.
    pub disks: Vec<u32>,
}

/// A consistency group as the administrator defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDef {
    /// Its name.
    pub name: String,
    /// The member that runs the group's rounds and records its points.
    pub coordinator: MachineId,
    /// Every member, the coordinator included, sorted.
    pub members: Vec<MachineId>,
}

/// A consistency-group point as recorded by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPointRow {
    /// Group name.
    pub group: String,
    /// Point number on every member.
    pub point: u64,
    /// Member machine ids.
    pub members: Vec<MachineId>,
    /// When it was recorded.
    pub created_unix_ms: u64,
}

super::backend_trait! {
    /// Recovery points and consistency groups.
    PointStore {
        /// Records a recovery point.
        fn add_point(&self, p: &PointRow) -> Result<(), StateError>;

        /// Forgets a recovery point.
        fn delete_point(&self, id: &str) -> Result<(), StateError>;

        /// A machine's points, oldest first.
        fn points(&self, machine_id: MachineId) -> Result<Vec<PointRow>, StateError>;

        /// A machine's newest point (the last of [`PointStore::points`]).
        fn newest_point(&self, machine_id: MachineId) -> Result<Option<PointRow>, StateError>;

        /// Records a group point (idempotent).
        fn add_group_point(
            &self,
            group: &str,
            point: u64,
            members: &[MachineId],
        ) -> Result<(), StateError>;

        /// Defines (or redefines) a consistency group. False when a member is in another group
        /// already (a machine is in one group at most).
        fn set_group(&self, g: &GroupDef) -> Result<bool, StateError>;

        /// Deletes a group's definition (its recorded points stay listed, and count no more).
        fn delete_group(&self, name: &str) -> Result<bool, StateError>;

        /// Every defined group, by name.
        fn groups(&self) -> Result<Vec<GroupDef>, StateError>;

        /// The group `machine_id` is a member of, if any.
        fn group_of(&self, machine_id: MachineId) -> Result<Option<GroupDef>, StateError>;

        /// A member's own report that it recorded group point `point`.
        fn add_member_point(
            &self,
            group: &str,
            machine_id: MachineId,
            point: u64,
        ) -> Result<(), StateError>;

        /// Group points of `group` (every group when `None`), oldest first: those its
        /// coordinator recorded *and* every member it names reported recording itself. A
        /// record alone (a coordinator's claim) is not a group point.
        fn group_points(&self, group: Option<&str>) -> Result<Vec<GroupPointRow>, StateError>;

        /// Every recorded group point, whether its members reported it or not.
        fn group_point_records(
            &self,
            group: Option<&str>,
        ) -> Result<Vec<GroupPointRow>, StateError>;
    }
}

fn point_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PointRow> {
    let disks: String = r.get(5)?;
    Ok(PointRow {
        id: r.get(0)?,
        machine_id: r.get(1)?,
        point: r.get::<_, i64>(2)? as u64,
        kind: r.get(3)?,
        created_unix_ms: r.get::<_, i64>(4)? as u64,
        disks: disks.split(',').filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect(),
    })
}

impl PointStore for Sqlite {
    fn add_point(&self, p: &PointRow) -> Result<(), StateError> {
        let disks = p.disks.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO points (id, machine_id, point, kind, created_unix_ms, disks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.id,
                    p.machine_id,
                    p.point as i64,
                    p.kind,
                    p.created_unix_ms as i64,
                    disks
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete_point(&self, id: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM points WHERE id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn points(&self, machine_id: MachineId) -> Result<Vec<PointRow>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached(
                "SELECT id, machine_id, point, kind, created_unix_ms, disks FROM points
                 WHERE machine_id = ?1 ORDER BY point",
            )
            .map_err(|e| self.err(e))?;
        let rows = s.query_map(params![machine_id], point_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn newest_point(&self, machine_id: MachineId) -> Result<Option<PointRow>, StateError> {
        use rusqlite::OptionalExtension;
        self.read()
            .row_cached(
                "SELECT id, machine_id, point, kind, created_unix_ms, disks FROM points
                 WHERE machine_id = ?1 ORDER BY point DESC LIMIT 1",
                params![machine_id],
                point_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn add_group_point(
        &self,
        group: &str,
        point: u64,
        members: &[MachineId],
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO group_points (group_name, point, members, created_unix_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![group, point as i64, join_ids(members), now_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn set_group(&self, g: &GroupDef) -> Result<bool, StateError> {
        for other in self.groups()? {
            if other.name != g.name && other.members.iter().any(|m| g.members.contains(m)) {
                return Ok(false);
            }
        }
        self.conn()
            .execute(
                "INSERT INTO groups (name, coordinator, members) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET coordinator = ?2, members = ?3",
                params![g.name, g.coordinator, join_ids(&g.members)],
            )
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    fn delete_group(&self, name: &str) -> Result<bool, StateError> {
        let n = self
            .conn()
            .execute("DELETE FROM groups WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn groups(&self) -> Result<Vec<GroupDef>, StateError> {
        let c = self.read();
        let mut s = c
            .prepare_cached("SELECT name, coordinator, members FROM groups ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(GroupDef {
                    name: r.get(0)?,
                    coordinator: r.get(1)?,
                    members: split_ids(&r.get::<_, String>(2)?)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn group_of(&self, machine_id: MachineId) -> Result<Option<GroupDef>, StateError> {
        Ok(self.groups()?.into_iter().find(|g| g.members.contains(&machine_id)))
    }

    fn add_member_point(
        &self,
        group: &str,
        machine_id: MachineId,
        point: u64,
    ) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO group_member_points (group_name, machine_id, point)
                 VALUES (?1, ?2, ?3)",
                params![group, machine_id, point as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn group_points(&self, group: Option<&str>) -> Result<Vec<GroupPointRow>, StateError> {
        let rows = self.group_point_records(group)?;
        let c = self.read();
        let mut reported = c
            .prepare_cached(
                "SELECT 1 FROM group_member_points
                 WHERE group_name = ?1 AND machine_id = ?2 AND point = ?3",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let mut all = true;
            for m in &r.members {
                all &= reported
                    .exists(params![r.group, m, r.point as i64])
                    .map_err(|e| self.err(e))?;
            }
            if all {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn group_point_records(&self, group: Option<&str>) -> Result<Vec<GroupPointRow>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
                "SELECT group_name, point, members, created_unix_ms FROM group_points
                 WHERE ?1 IS NULL OR group_name = ?1 ORDER BY group_name, point",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![group], |r| {
                Ok(GroupPointRow {
                    group: r.get(0)?,
                    point: r.get::<_, i64>(1)? as u64,
                    members: split_ids(&r.get::<_, String>(2)?)?,
                    created_unix_ms: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

/// Member lists are stored as comma-separated machine ids.
fn join_ids(ids: &[MachineId]) -> String {
    ids.iter().map(MachineId::to_string).collect::<Vec<_>>().join(",")
}

/// The inverse of [`join_ids`]; a malformed id is a conversion error of column 2.
fn split_ids(text: &str) -> rusqlite::Result<Vec<MachineId>> {
    text.split(',')
        .map(|m| {
            m.parse().map_err(|e: String| {
                rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
            })
        })
        .collect()
}
