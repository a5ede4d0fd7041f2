//! For tests and benchmarks (cargo feature `testkit`, never in the plugin): a vcsim
//! (govmomi's vSphere simulator, built by scripts/vcsim.sh from Debian's packages) on a
//! free loopback port over TLS with a fresh private CA, and a small SOAP client (curl) to
//! look at what the plugin made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running vcsim, stopped when dropped (its standard input closes).
pub struct Vcsim {
    child: Child,
    _stdin: ChildStdin,
    /// `https://127.0.0.1:<port>/sdk`
    pub url: String,
    pub port: u16,
    /// The private CA that signed its certificate (PEM file).
    pub ca_pem: PathBuf,
    /// The folder holding datastore `LocalDS_0`.
    pub datastore_dir: PathBuf,
    pub username: String,
    pub password: String,
    dir: tempfile::TempDir,
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The datacenter, datastore, appliance VM, cluster and networks of vcsim's default
/// inventory that the settings name.
pub const DATACENTER: &str = "DC0";
pub const DATASTORE: &str = "LocalDS_0";
pub const APPLIANCE_VM: &str = "DC0_C0_RP0_VM0";
pub const COMPUTE: &str = "DC0_C0";
pub const NETWORK: &str = "VM Network";
pub const TEST_NETWORK: &str = "DC0_DVPG1";

impl Vcsim {
    /// Starts vcsim accepting only `username`/`password`; its datastores are folders under
    /// `tmpdir` (a fresh temporary folder when `None`).
    pub fn start(username: &str, password: &str, tmpdir: Option<&Path>) -> Vcsim {
        let out = Command::new("bash")
            .arg(repo().join("scripts/vcsim.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/vcsim.sh");
        assert!(out.status.success(), "scripts/vcsim.sh failed");
        let bin = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let ca = lifeboat_net::ca::Ca::load_or_create(&pki.join("ca"), "vcsim test CA").unwrap();
        let id = ca.issue_server(&["127.0.0.1".to_owned()]).unwrap();
        let (cert, key, ca_pem) =
            (pki.join("server.pem"), pki.join("server.key"), pki.join("ca.pem"));
        std::fs::write(&cert, &id.cert_pem).unwrap();
        std::fs::write(&key, &id.key_pem).unwrap();
        std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
        let tmp = tmpdir.map(Path::to_path_buf).unwrap_or_else(|| dir.path().join("datastores"));
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = Command::new(&bin)
            .args(["-l", "127.0.0.1:0", "-tlscert"])
            .arg(&cert)
            .arg("-tlskey")
            .arg(&key)
            .args(["-username", username, "-password", password])
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting lifeboat-vcsim");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("vcsim printed nothing").unwrap();
        let raw = line.strip_prefix("LIFEBOAT_VCSIM url=").expect("vcsim's first line").to_owned();
        // https://user:pass@127.0.0.1:PORT/sdk -> https://127.0.0.1:PORT/sdk
        let host_part = raw.rsplit('@').next().unwrap().trim_start_matches("https://");
        let url = format!("https://{host_part}");
        let port: u16 = host_part
            .split('/')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("a port in vcsim's URL");
        let start = Instant::now();
        let datastore_dir = loop {
            let found = std::fs::read_dir(&tmp).unwrap().flatten().find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("govcsim-{DATACENTER}-{DATASTORE}-"))
            });
            if let Some(e) = found {
                break e.path();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "vcsim made no datastore folder");
            std::thread::sleep(Duration::from_millis(50));
        };
        Vcsim {
            child,
            _stdin: stdin,
            url,
            port,
            ca_pem,
            datastore_dir,
            username: username.to_owned(),
            password: password.to_owned(),
            dir,
        }
    }

    /// The grant's authority.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Settings naming vcsim's default inventory.
    pub fn settings(&self) -> Vec<(String, String)> {
        [
            ("url", self.url.as_str()),
            ("username", &self.username),
            ("password", &self.password),
            ("datacenter", DATACENTER),
            ("datastore", DATASTORE),
            ("appliance_vm", APPLIANCE_VM),
            ("compute", COMPUTE),
            ("network", NETWORK),
            ("test_network", TEST_NETWORK),
            ("task_wait_ms", "20000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// One SOAP call (logged in with a cookie jar): the response body.
    pub fn soap(&self, body: &str) -> String {
        let jar = self.dir.path().join("cookies");
        let post = |b: &str| -> String {
            let env = format!(
                "<?xml version=\"1.0\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
                 xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns=\"urn:vim25\"><soapenv:Body>{b}</soapenv:Body></soapenv:Envelope>"
            );
            let out = Command::new("curl")
                .args(["-s", "--cacert"])
                .arg(&self.ca_pem)
                .arg("-b")
                .arg(&jar)
                .arg("-c")
                .arg(&jar)
                .args([
                    "-H",
                    "Content-Type: text/xml; charset=utf-8",
                    "-H",
                    "SOAPAction: \"urn:vim25/7.0\"",
                    "--data-binary",
                    &env,
                    &self.url,
                ])
                .output()
                .expect("running curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        if !jar.exists() {
            post(&format!(
                "<Login><_this type=\"SessionManager\">SessionManager</_this><userName>{}</userName><password>{}</password></Login>",
                crate::soap::esc(&self.username),
                crate::soap::esc(&self.password)
            ));
        }
        post(body)
    }

    /// The VM's facts as vSphere has them, or `None` if there is no VM `vm` (a moref id).
    pub fn vm(&self, vm: &str) -> Option<VmFacts> {
        let body = self.soap(&format!(
            "<RetrievePropertiesEx><_this type=\"PropertyCollector\">propertyCollector</_this><specSet><propSet>\
             <type>VirtualMachine</type><pathSet>config.firmware</pathSet><pathSet>config.hardware.numCPU</pathSet>\
             <pathSet>config.hardware.memoryMB</pathSet><pathSet>config.hardware.device</pathSet>\
             <pathSet>runtime.powerState</pathSet><pathSet>name</pathSet></propSet>\
             <objectSet><obj type=\"VirtualMachine\">{vm}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"
        ));
        let doc = roxmltree::Document::parse(&body).ok()?;
        let mut f = VmFacts::default();
        let mut any = false;
        for p in doc.descendants().filter(|n| n.has_tag_name("propSet")) {
            let name = crate::soap::text(p, "name").unwrap_or_default();
            let val = crate::soap::child(p, "val")?;
            any = true;
            let t = val.text().unwrap_or("").trim().to_owned();
            match name.as_str() {
                "config.firmware" => f.firmware = t,
                "config.hardware.numCPU" => f.cpus = t.parse().unwrap_or(0),
                "config.hardware.memoryMB" => f.memory_mb = t.parse().unwrap_or(0),
                "runtime.powerState" => f.power = t,
                "name" => f.name = t,
                "config.hardware.device" => {
                    for d in crate::vsphere::parse_devices(val) {
                        if d.kind == "VirtualDisk" {
                            f.disks.push(d.file_name.unwrap_or_default());
                        } else if d.kind.starts_with("VirtualVmxnet")
                            || d.kind.starts_with("VirtualE1000")
                        {
                            f.nics.push((d.network.unwrap_or_default(), d.mac.unwrap_or_default()));
                        }
                    }
                }
                _ => {}
            }
        }
        any.then_some(f)
    }

    /// Powers VM `vm` (a moref id) off, as an administrator would, and waits until it is.
    pub fn power_off(&self, vm: &str) {
        self.soap(&format!(
            "<PowerOffVM_Task><_this type=\"VirtualMachine\">{vm}</_this></PowerOffVM_Task>"
        ));
        for _ in 0..100 {
            if self.vm(vm).is_some_and(|f| f.power == "poweredOff") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("VM {vm} did not power off");
    }

    /// The backing files of the disks attached to the appliance VM.
    pub fn appliance_disks(&self) -> Vec<String> {
        let body = self.soap(&format!(
            "<FindByInventoryPath><_this type=\"SearchIndex\">SearchIndex</_this><inventoryPath>{DATACENTER}/vm/{APPLIANCE_VM}</inventoryPath></FindByInventoryPath>"
        ));
        let doc = roxmltree::Document::parse(&body).unwrap();
        let id = crate::soap::find(doc.root(), "returnval").unwrap().text().unwrap().to_owned();
        self.vm(&id).unwrap().disks
    }

    /// Ends every session but this client's (as vCenter does when sessions expire, or an
    /// administrator ends them); returns how many it ended.
    pub fn terminate_other_sessions(&self) -> usize {
        let body = self.soap(
            "<RetrievePropertiesEx><_this type=\"PropertyCollector\">propertyCollector</_this><specSet><propSet>\
             <type>SessionManager</type><pathSet>sessionList</pathSet><pathSet>currentSession</pathSet></propSet>\
             <objectSet><obj type=\"SessionManager\">SessionManager</obj></objectSet></specSet><options/></RetrievePropertiesEx>",
        );
        let doc = roxmltree::Document::parse(&body).unwrap();
        let mut mine = String::new();
        let mut keys = Vec::new();
        for p in doc.descendants().filter(|n| n.has_tag_name("propSet")) {
            let val = crate::soap::child(p, "val").unwrap();
            match crate::soap::text(p, "name").as_deref() {
                Some("currentSession") => mine = crate::soap::text(val, "key").unwrap_or_default(),
                _ => keys.extend(
                    crate::soap::children(val, "UserSession")
                        .filter_map(|u| crate::soap::text(u, "key")),
                ),
            }
        }
        let others: Vec<String> = keys.into_iter().filter(|k| *k != mine).collect();
        for k in &others {
            self.soap(&format!(
                "<TerminateSession><_this type=\"SessionManager\">SessionManager</_this><sessionId>{k}</sessionId></TerminateSession>"
            ));
        }
        others.len()
    }

    /// The port group key of distributed port group `name` (`dvportgroup-…`).
    pub fn portgroup_key(&self, name: &str) -> String {
        let body = self.soap(&format!(
            "<FindByInventoryPath><_this type=\"SearchIndex\">SearchIndex</_this><inventoryPath>{DATACENTER}/network/{name}</inventoryPath></FindByInventoryPath>"
        ));
        let doc = roxmltree::Document::parse(&body).unwrap();
        crate::soap::find(doc.root(), "returnval").unwrap().text().unwrap().to_owned()
    }
}

/// A VM as vSphere describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFacts {
    pub name: String,
    pub firmware: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub power: String,
    /// Backing files, in device order.
    pub disks: Vec<String>,
    /// (network name or port group key, MAC)
    pub nics: Vec<(String, String)>,
}
