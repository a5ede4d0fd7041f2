use super::*;
use crate::vsphere::Device;

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let mut s: Settings = vec![
        ("url".into(), "https://vc.example/sdk".into()),
        ("username".into(), "administrator@vsphere.local".into()),
        ("password".into(), "pw".into()),
        ("datacenter".into(), "DC0".into()),
        ("datastore".into(), "LocalDS_0".into()),
        ("appliance_vm".into(), "lifeboat".into()),
    ];
    for (k, v) in pairs {
        s.retain(|(a, _)| a != k);
        if !v.is_empty() {
            s.push(((*k).into(), (*v).into()));
        }
    }
    s
}

#[test]
fn settings_have_defaults_and_refuse_bad_values() {
    let c = Config::from_settings(&settings(&[])).unwrap();
    assert_eq!(
        (c.directory.as_str(), c.guest_id.as_str(), c.timeout_ms),
        ("lifeboat", "otherLinux64Guest", 50_000)
    );
    let c = Config::from_settings(&settings(&[("datastore", "cluster-ds/ds1")])).unwrap();
    assert_eq!(c.datastore_name(), "ds1");
    for (k, v) in [
        ("url", "vc.example"),
        ("url", ""),
        ("password", ""),
        ("appliance_vm", ""),
        ("directory", "../x"),
        ("directory", "/abs"),
        ("directory", "a//b"),
        ("directory", "a/.hidden"),
        ("timeout_ms", "soon"),
    ] {
        assert!(Config::from_settings(&settings(&[(k, v)])).is_err(), "{k}={v:?} accepted");
    }
}

#[test]
fn records_round_trip_and_refuse_malformed_input() {
    let m = DiskMeta { size: 1 << 30, uuid: "6000C291-0000".into(), path: None };
    assert_eq!(DiskMeta::parse(&m.to_json(), "x").unwrap(), m);
    let adopted = DiskMeta { path: Some("web/web.vmdk".into()), ..m.clone() };
    assert_eq!(DiskMeta::parse(&adopted.to_json(), "x").unwrap(), adopted);
    for bad in [
        r#"{"format":1,"size":1,"uuid":"u","path":"/etc/x.vmdk"}"#,
        r#"{"format":1,"size":1,"uuid":"u","path":"web/../x.vmdk"}"#,
        r#"{"format":1,"size":1,"uuid":"u","path":"web//x.vmdk"}"#,
        r#"{"format":1,"size":1,"uuid":"u","path":"web/x.txt"}"#,
        r#"{"format":1,"size":1,"uuid":"u","path":7}"#,
    ] {
        assert!(DiskMeta::parse(bad.as_bytes(), "x").is_err(), "{bad}");
    }
    let p = PointMeta {
        info: PointInfo {
            id: "p1".into(),
            tag: "t".into(),
            created_unix_ms: 5,
            disks: vec!["a".into()],
        },
        disks: vec![("a".into(), m.clone())],
    };
    let back = PointMeta::parse("p1", &p.to_json(), "x").unwrap();
    assert_eq!(
        (back.info.tag, back.info.created_unix_ms, back.info.disks),
        ("t".into(), 5, vec!["a".to_owned()])
    );
    assert_eq!(back.disks, p.disks);
    for bad in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"format\":2,\"size\":1,\"uuid\":\"u\"}",
        b"{\"format\":1,\"size\":-1,\"uuid\":\"u\"}",
        b"{\"format\":1,\"size\":1}",
        b"\xff\xfe",
    ] {
        assert!(DiskMeta::parse(bad, "x").is_err(), "{bad:?}");
    }
    for bad in [
        &b"{\"format\":1,\"tag\":\"t\",\"created_unix_ms\":1,\"disks\":[{\"id\":\"../x\",\"size\":1,\"uuid\":\"u\"}]}"[..],
        b"{\"format\":1,\"tag\":\"t\",\"created_unix_ms\":1}",
        b"{\"format\":1,\"tag\":1,\"created_unix_ms\":1,\"disks\":[]}",
    ] {
        assert!(PointMeta::parse("p", bad, "x").is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

fn dev(
    kind: &str,
    key: i32,
    controller: Option<i32>,
    unit: Option<i32>,
    bus: Option<i32>,
) -> Device {
    Device {
        key,
        kind: kind.into(),
        controller_key: controller,
        unit_number: unit,
        bus_number: bus,
        file_name: None,
        capacity_kb: None,
        mac: None,
        network: None,
    }
}

#[test]
fn free_slots_skip_the_controller_unit_and_taken_ones() {
    let mut d = vec![
        dev("ParaVirtualSCSIController", 1000, None, None, Some(0)),
        dev("VirtualIDEController", 200, None, None, Some(0)),
    ];
    assert_eq!(free_slot(&d), Some((1000, 0)));
    for u in 0..7 {
        d.push(dev("VirtualDisk", 2000 + u, Some(1000), Some(u), None));
    }
    assert_eq!(free_slot(&d), Some((1000, 8)), "unit 7 is the controller's");
    for u in 8..16 {
        d.push(dev("VirtualDisk", 2000 + u, Some(1000), Some(u), None));
    }
    assert_eq!(free_slot(&d), None, "a full controller");
    d.push(dev("VirtualLsiLogicController", 1001, None, None, Some(1)));
    assert_eq!(free_slot(&d), Some((1001, 0)));
    assert_eq!(free_slot(&[]), None);
}

#[test]
fn vm_configs_carry_the_spec() {
    let spec = VmSpec {
        name: "fo-m1".into(),
        firmware: Firmware::Uefi,
        cpus: 2,
        memory_mib: 2048,
        disks: vec!["d0".into(), "d1".into()],
        nics: vec![NicSpec {
            network: "VM Network".into(),
            mac: Some("00:50:56:AA:BB:CC".into()),
            ip: None,
        }],
        isolated: false,
    };
    let disks =
        vec![("[ds] l/disks/d0.vmdk".to_owned(), 1024), ("[ds] l/disks/d1.vmdk".to_owned(), 2048)];
    let x =
        vm_config_xml(&spec, "otherLinux64Guest", "[ds]", &disks, &["<backing/>".into()]).unwrap();
    let wrapped = format!("<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{x}</r>");
    let doc = roxmltree::Document::parse(&wrapped).expect("well-formed");
    let t = |n: &str| soap::find(doc.root(), n).and_then(|n| n.text()).unwrap_or("").to_owned();
    assert_eq!(
        (t("name"), t("firmware"), t("numCPUs"), t("memoryMB")),
        ("fo-m1".into(), "efi".into(), "2".into(), "2048".into())
    );
    assert!(x.contains("<fileName>[ds] l/disks/d0.vmdk</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing><controllerKey>-100</controllerKey><unitNumber>0</unitNumber>"), "boot disk at SCSI 0:0: {x}");
    assert!(x.contains("<macAddress>00:50:56:aa:bb:cc</macAddress>") && x.contains("manual"));
    // Disk 8 goes to unit 8 (7 is the controller), disk 16 to a second controller.
    let many: Vec<(String, u64)> = (0..16).map(|i| (format!("[ds] d{i}.vmdk"), 1)).collect();
    let x =
        vm_config_xml(&VmSpec { nics: vec![], ..spec.clone() }, "g", "[ds]", &many, &[]).unwrap();
    assert!(x.contains("<fileName>[ds] d7.vmdk</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing><controllerKey>-100</controllerKey><unitNumber>8</unitNumber>"));
    assert!(x.contains("<controllerKey>-101</controllerKey><unitNumber>0</unitNumber>"));
    // Refused: no disks, too many, a bad MAC.
    assert!(vm_config_xml(&spec, "g", "[ds]", &[], &[]).is_err());
    let too_many: Vec<(String, u64)> = (0..61).map(|i| (format!("d{i}"), 1)).collect();
    assert!(vm_config_xml(&spec, "g", "[ds]", &too_many, &["<backing/>".into()]).is_err());
    let bad_mac = VmSpec {
        nics: vec![NicSpec {
            network: "n".into(),
            mac: Some("00:50:56:zz:00:00".into()),
            ip: None,
        }],
        ..spec.clone()
    };
    assert!(vm_config_xml(&bad_mac, "g", "[ds]", &disks, &["<backing/>".into()]).is_err());
    // Names are escaped.
    let odd = VmSpec { name: "a<b".into(), ..spec };
    assert!(
        vm_config_xml(&odd, "g", "[ds]", &disks, &["<backing/>".into()])
            .unwrap()
            .contains("a&lt;b")
    );
}

/// A task vSphere failed, as `info` of the task comes back from `RetrievePropertiesEx`
/// (the shape vCenter sends: `LocalizedMethodFault` with an `xsi:type`d `fault`): the
/// plugin's error names the step, vSphere's message and fault, with the kind its table says.
#[test]
fn task_errors_become_the_plugins_errors() {
    let info = |fault: &str, message: &str| {
        format!(
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>\
             <RetrievePropertiesExResponse xmlns=\"urn:vim25\"><returnval><objects>\
             <obj type=\"Task\">task-7</obj><propSet><name>info</name><val xsi:type=\"TaskInfo\">\
             <key>task-7</key><state>error</state><error><fault xsi:type=\"{fault}\">\
             <name>x</name></fault><localizedMessage>{message}</localizedMessage></error>\
             </val></propSet></objects></returnval></RetrievePropertiesExResponse>\
             </soapenv:Body></soapenv:Envelope>"
        )
    };
    type Kind = fn(&PluginError) -> bool;
    let cases: [(&str, &str, Kind); 5] = [
        ("DuplicateName", "The name 'web' already exists.", |e| {
            matches!(e, PluginError::Invalid(_))
        }),
        (
            "NoDiskSpace",
            "There is not enough space on the file system.",
            |e| matches!(e, PluginError::Retryable(m) if m.contains("datastore is full")),
        ),
        (
            "NoPermission",
            "Permission to perform this operation was denied.",
            |e| matches!(e, PluginError::Denied(m) if m.contains("privilege")),
        ),
        ("FileLocked", "Unable to access file since it is locked", |e| {
            matches!(e, PluginError::Retryable(_))
        }),
        ("GenericVmConfigFault", "Failed to start the virtual machine.", |e| {
            matches!(e, PluginError::Internal(_))
        }),
    ];
    for (fault, message, kind) in cases {
        let body = info(fault, message);
        let doc = soap::parse(&body).unwrap();
        let state = soap::find(doc.root(), "state").and_then(|n| n.text()).unwrap();
        assert_eq!(state, "error");
        let f = soap::parse_task_error(soap::find(doc.root(), "error").unwrap());
        assert_eq!(f.kind, fault);
        let e = f.error("creating VM web");
        let text = format!("{e:?}");
        assert!(kind(&e), "{fault}: {e:?}");
        assert!(
            text.contains("creating VM web") && text.contains(fault) && text.contains(message),
            "{fault}: {text}"
        );
    }
}
