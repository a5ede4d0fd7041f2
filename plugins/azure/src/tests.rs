use super::*;
use crate::target::same_url;

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut s: Settings = vec![
        ("account".into(), "devstoreaccount1".into()),
        ("key".into(), "a2V5".into()),
        ("endpoint".into(), "http://127.0.0.1:10000/devstoreaccount1".into()),
    ];
    for (k, v) in extra {
        s.retain(|(kk, _)| kk != k);
        s.push((k.to_string(), v.to_string()));
    }
    s
}

#[test]
fn settings_parse_and_bad_ones_are_named() {
    let a = parse_settings(&settings(&[])).unwrap();
    assert_eq!(a.blob.authority, "127.0.0.1:10000");
    assert_eq!(a.blob.base_path, "/devstoreaccount1");
    assert_eq!(a.blob.container, "lifeboat");
    assert!(is_uuid(&a.lease_id));
    assert_eq!(a.lease_duration, Some(Duration::from_secs(60)));
    assert!(a.arm.is_none());
    let inf = parse_settings(&settings(&[("lease_seconds", "infinite")])).unwrap();
    assert_eq!(inf.lease_duration, None);
    for (k, v) in [
        ("endpoint", "127.0.0.1:10000"),
        ("container", "Bad_Name"),
        ("key", "%%%"),
        ("lease_seconds", "5"),
        ("lease_id", "me"),
    ] {
        let e = parse_settings(&settings(&[(k, v)])).err().unwrap();
        assert!(matches!(&e, PluginError::Invalid(m) if m.contains(k)), "{k}: {e}");
    }
    let e = parse_settings(&vec![("account".into(), "a".into())]).err().unwrap();
    assert!(e.to_string().contains("`key`"), "{e}");
}

#[test]
fn point_metadata_round_trips_and_corruption_is_reported() {
    let m = PointMeta {
        tag: "crash:1 \"q\"".into(),
        created_unix_ms: 1_700_000_000_123,
        disks: vec![("d0".into(), "2024-01-01T00:00:00.1234567Z".into(), 4096)],
    };
    assert_eq!(PointMeta::from_json(&m.to_json()).unwrap(), m);
    assert!(PointMeta::from_json(b"{").unwrap_err().contains("JSON"));
    assert!(PointMeta::from_json(b"{\"tag\":\"x\"}").unwrap_err().contains("disks"));
}

#[test]
fn ids_uuids_and_urls() {
    assert!(check_id("m1-d0.img").is_ok());
    assert!(check_id("../x").is_err() && check_id(".x").is_err() && check_id("a/b").is_err());
    let u = uuid4();
    assert!(is_uuid(&u) && &u[14..15] == "4", "{u}");
    assert!(same_url(
        "http://h/c/b?snapshot=2024-01-01T00%3A00%3A00Z",
        "http://h/c/b?snapshot=2024-01-01T00:00:00Z"
    ));
    assert_eq!(round_up(1, 512), 512);
    assert_eq!(round_up(1024, 512), 1024);
}
