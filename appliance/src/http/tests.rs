//! Tests of the HTTP layer.

use super::groups::check_group_definition;
use super::*;
use lifeboat_wire::MachineId;

/// Issue 11, finding 6: any member could record group points naming other machines
/// (any point number, squatting future ones) and so steer their `latest-group`. Now
/// only the administrator's group, recorded by its coordinator with exactly its
/// members, counts, and only once each member reported the point itself.
#[test]
fn only_the_coordinator_records_and_only_reported_points_count() {
    let d = tempfile::tempdir().unwrap();
    let state = State::open(&d.path().join("s.db")).unwrap();
    let (a, b, c, x) =
        (MachineId([1; 16]), MachineId([2; 16]), MachineId([3; 16]), MachineId([9; 16]));
    for (p, m) in [("p1", a), ("p2", b), ("p3", c)] {
        state.add_passphrase(p).unwrap();
        assert!(state.register_machine(p, m, "host").unwrap());
    }
    let def = |coord: MachineId, members: &[MachineId]| api::GroupDefinition {
        coordinator: coord.to_string(),
        members: members.iter().map(|s| s.to_string()).collect(),
    };
    let err = |r: Result<crate::store::GroupDef, ApiError>| r.unwrap_err().to_string();
    assert!(err(check_group_definition(&state, "e rp", def(a, &[a, b]))).contains("name"));
    assert!(err(check_group_definition(&state, "erp", def(a, &[a]))).contains("members"));
    assert!(err(check_group_definition(&state, "erp", def(a, &[a, a]))).contains("twice"));
    assert!(
        err(check_group_definition(&state, "erp", def(a, &[a, x])))
            .contains("not a registered machine")
    );
    assert!(err(check_group_definition(&state, "erp", def(c, &[a, b]))).contains("coordinator"));
    let g = check_group_definition(&state, "erp", def(b, &[b, a])).unwrap();
    assert_eq!(g.members, [a, b]);
    assert!(state.set_group(&g).unwrap());
    let other = check_group_definition(&state, "crm", def(c, &[c, a])).unwrap();
    assert!(!state.set_group(&other).unwrap(), "a machine is in one group at most");

    let rec = |group: &str, point: u64, members: &[MachineId]| api::GroupPoint {
        group: group.into(),
        point,
        members: members.iter().map(|s| s.to_string()).collect(),
    };
    let code = |r: Result<Vec<MachineId>, ApiError>| r.unwrap_err().error.code;
    // A member that is not the coordinator, naming B: refused.
    assert_eq!(code(check_group_point(&state, a, &rec("erp", 9, &[a, b]))), "not-coordinator");
    // Another machine, a group of its own making: refused.
    assert_eq!(code(check_group_point(&state, c, &rec("mine", 9, &[c, b]))), "unknown-group");
    // The coordinator, with the wrong members: refused.
    assert_eq!(code(check_group_point(&state, b, &rec("erp", 9, &[b, c]))), "wrong-members");
    assert_eq!(code(check_group_point(&state, b, &rec("erp", 9, &[b, a, a]))), "wrong-members");
    assert!(check_group_point(&state, b, &rec("erp", 9, &[a, b])).is_ok());
    // A record counts once every member reported the point: until then B's
    // latest-group is not steered by it.
    for m in [a, b] {
        state
            .add_point(&crate::store::PointRow {
                id: format!("{m}-p9"),
                machine_id: m,
                point: 9,
                kind: lifeboat_api::PointKind::Crash,
                created_unix_ms: 1,
                disks: vec![0],
            })
            .unwrap();
    }
    let latest_group = |state: &State| {
        crate::master_target::failover::choose_point(
            state,
            b,
            &crate::master_target::failover::PointChoice::LatestGroup,
        )
        .unwrap()
        .ok()
        .map(|p| p.id)
    };
    state.add_group_point("erp", 9, &[a, b]).unwrap();
    assert_eq!(latest_group(&state), None);
    assert!(state.group_points(Some("erp")).unwrap().is_empty(), "a claim alone");
    state.add_member_point("erp", a, 9).unwrap();
    assert!(state.group_points(Some("erp")).unwrap().is_empty(), "one member of two");
    state.add_member_point("erp", b, 9).unwrap();
    let rows = state.group_points(Some("erp")).unwrap();
    assert_eq!((rows.len(), rows[0].members.clone()), (1, vec![a, b]));
    assert_eq!(latest_group(&state).as_deref(), Some(format!("{b}-p9").as_str()));
    // A revoked member leaves its group (its peers then refuse it): here the group is
    // left with one member, and dissolved.
    assert!(state.revoke_machine(a).unwrap());
    assert!(state.group_of(b).unwrap().is_none());
    assert!(state.group_points(Some("other")).unwrap().is_empty());
}

/// The process server's errors become answers here: a sequence gap carries the sequence
/// the disk expects, a full cache `Retry-After`.
#[tokio::test]
async fn process_errors_keep_the_expected_sequence_and_retry_after() {
    use axum::response::IntoResponse as _;
    use http_body_util::BodyExt as _;
    let mut gap = ProcessError::new(Kind::Conflict, "sequence-gap", "resend from 7");
    gap.expected_sequence = Some(7);
    let r = ApiError::from(gap).into_response();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let e: api::ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!((e.code.as_str(), e.expected_sequence), ("sequence-gap", Some(7)));
    let mut full = ProcessError::new(Kind::TooBusy, "cache-full", "retry later");
    full.retry_after = Some(5);
    let r = ApiError::from(full).into_response();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[http::header::RETRY_AFTER], "5");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let e: api::ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!((e.code.as_str(), e.expected_sequence), ("cache-full", None));
}
