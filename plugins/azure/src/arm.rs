//! Failed-over VMs through the Azure Resource Manager REST API.
//!
//! `create-vm` imports each materialised disk (a fixed-VHD page blob) as a managed
//! disk, creates one network interface per NIC of the spec, then creates the VM with
//! the OS disk attached; disks and NICs are created with `deleteOption: Delete`, so
//! deleting the VM deletes them too. Every ARM PUT is idempotent, so a call that ran out
//! of time answers `retryable` and the host simply calls again.

use crate::blob::map_transport;
use crate::http::{self, Request, Response};
use lifeboat_sdk::target::{Firmware, PowerState, VmSpec};
use lifeboat_sdk::{PluginError, Settings, setting};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const COMPUTE_API: &str = "2024-07-01";
pub const DISK_API: &str = "2024-03-02";
pub const NETWORK_API: &str = "2024-05-01";

/// (name, vCPUs, memory MiB), cheapest first within each family.
const SIZES: &[(&str, u32, u64)] = &[
    ("Standard_B1s", 1, 1024),
    ("Standard_B2s", 2, 4096),
    ("Standard_D2s_v5", 2, 8192),
    ("Standard_E2s_v5", 2, 16384),
    ("Standard_D4s_v5", 4, 16384),
    ("Standard_E4s_v5", 4, 32768),
    ("Standard_D8s_v5", 8, 32768),
    ("Standard_E8s_v5", 8, 65536),
    ("Standard_D16s_v5", 16, 65536),
    ("Standard_E16s_v5", 16, 131_072),
    ("Standard_D32s_v5", 32, 131_072),
    ("Standard_E32s_v5", 32, 262_144),
    ("Standard_D64s_v5", 64, 262_144),
    ("Standard_E64s_v5", 64, 524_288),
];

/// The smallest listed VM size with at least the spec's CPUs and memory.
pub fn pick_size(cpus: u32, memory_mib: u64) -> Result<&'static str, PluginError> {
    SIZES.iter().find(|(_, c, m)| *c >= cpus && *m >= memory_mib).map(|(n, _, _)| *n).ok_or_else(
        || {
            PluginError::Invalid(format!(
                "no VM size has {cpus} vCPUs and {memory_mib} MiB; set `vm_size`"
            ))
        },
    )
}

/// How the plugin gets ARM bearer tokens.
#[derive(Debug, Clone)]
enum Credentials {
    /// A token from the settings, used as is.
    Static(String),
    /// Service principal client-credentials flow against Microsoft Entra ID.
    ServicePrincipal {
        authority: String,
        tenant: String,
        client_id: String,
        secret: String,
        scope: String,
    },
}

/// ARM settings and the cached token.
#[derive(Debug)]
pub struct Arm {
    scheme: String,
    authority: String,
    base_path: String,
    subscription: String,
    resource_group: String,
    location: String,
    creds: Credentials,
    token: Option<(String, Instant)>,
    os_type: String,
    vm_size: Option<String>,
    disk_sku: String,
    storage_account_id: Option<String>,
    subnet: Option<String>,
    isolated_subnet: Option<String>,
    wait: Duration,
    timeout_ms: u64,
}

fn invalid(m: String) -> PluginError {
    PluginError::Invalid(m)
}

impl Arm {
    /// `None` when no ARM setting is present (VMs are then unsupported).
    pub fn from_settings(s: &Settings) -> Result<Option<Arm>, PluginError> {
        let keys = ["subscription", "resource_group", "location"];
        if keys.iter().all(|k| setting(s, k).is_none()) {
            return Ok(None);
        }
        let need = |k: &str| {
            setting(s, k).map(str::to_owned).ok_or_else(|| {
                invalid(format!(
                    "missing setting `{k}` (needed with the other ARM settings for VMs)"
                ))
            })
        };
        let endpoint = setting(s, "arm_endpoint").unwrap_or("https://management.azure.com");
        let (scheme, authority, base_path) = http::split_url(endpoint).ok_or_else(|| {
            invalid(format!("setting `arm_endpoint` = {endpoint:?}: expected an http(s) URL"))
        })?;
        let creds = match setting(s, "arm_token") {
            Some(t) => Credentials::Static(t.to_owned()),
            None => Credentials::ServicePrincipal {
                authority: setting(s, "arm_authority")
                    .unwrap_or("https://login.microsoftonline.com")
                    .trim_end_matches('/')
                    .to_owned(),
                tenant: need("tenant_id")?,
                client_id: need("client_id")?,
                secret: need("client_secret")?,
                scope: setting(s, "arm_scope")
                    .unwrap_or("https://management.azure.com/.default")
                    .to_owned(),
            },
        };
        let os_type = match setting(s, "os_type").unwrap_or("Linux") {
            "Linux" | "linux" => "Linux",
            "Windows" | "windows" => "Windows",
            o => return Err(invalid(format!("setting `os_type` = {o:?}: Linux or Windows"))),
        };
        let wait_ms = match setting(s, "arm_wait_ms") {
            None => 45_000,
            Some(v) => v
                .parse()
                .map_err(|_| invalid(format!("setting `arm_wait_ms` = {v:?}: a number")))?,
        };
        Ok(Some(Arm {
            scheme,
            authority,
            base_path,
            subscription: need("subscription")?,
            resource_group: need("resource_group")?,
            location: need("location")?,
            creds,
            token: None,
            os_type: os_type.to_owned(),
            vm_size: setting(s, "vm_size").map(str::to_owned),
            disk_sku: setting(s, "disk_sku").unwrap_or("StandardSSD_LRS").to_owned(),
            storage_account_id: setting(s, "storage_account_id").map(str::to_owned),
            subnet: setting(s, "subnet").map(str::to_owned),
            isolated_subnet: setting(s, "isolated_subnet").map(str::to_owned),
            wait: Duration::from_millis(wait_ms),
            timeout_ms: 30_000,
        }))
    }

    fn rg(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}", self.subscription, self.resource_group)
    }

    fn id(&self, provider: &str, name: &str) -> String {
        format!("{}/providers/{provider}/{name}", self.rg())
    }

    /// A subnet id from a NIC's `network`: an ARM id as is, or `<vnet>/<subnet>` in the
    /// resource group.
    fn subnet_id(&self, network: &str) -> Result<String, PluginError> {
        if network.starts_with("/subscriptions/") {
            return Ok(network.to_owned());
        }
        match network.split_once('/') {
            Some((vnet, subnet))
                if !vnet.is_empty() && !subnet.is_empty() && !subnet.contains('/') =>
            {
                Ok(self
                    .id("Microsoft.Network/virtualNetworks", &format!("{vnet}/subnets/{subnet}")))
            }
            _ => Err(invalid(format!(
                "network {network:?}: expected a subnet resource id or <vnet>/<subnet>"
            ))),
        }
    }

    fn token(&mut self) -> Result<String, PluginError> {
        let (authority, tenant, client_id, secret, scope) = match &self.creds {
            Credentials::Static(t) => return Ok(t.clone()),
            Credentials::ServicePrincipal { authority, tenant, client_id, secret, scope } => (
                authority.clone(),
                tenant.clone(),
                client_id.clone(),
                secret.clone(),
                scope.clone(),
            ),
        };
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let url = format!("{authority}/{}/oauth2/v2.0/token", http::encode(&tenant));
        let (scheme, auth, path) = http::split_url(&url)
            .ok_or_else(|| invalid(format!("setting `arm_authority`: bad URL {authority:?}")))?;
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            http::encode(&client_id),
            http::encode(&secret),
            http::encode(&scope)
        );
        let what = "getting an ARM token (service principal)";
        let r = http::send(
            &Request {
                method: "POST",
                scheme,
                authority: auth,
                path_and_query: path,
                headers: vec![
                    ("content-type".into(), "application/x-www-form-urlencoded".into()),
                    ("content-length".into(), form.len().to_string()),
                ],
                body: form.into_bytes(),
            },
            self.timeout_ms,
        )
        .map_err(|e| map_transport(e, what))?;
        if !(200..300).contains(&r.status) {
            let e = arm_error(&r, what);
            return Err(match e {
                PluginError::Invalid(m) if r.status == 400 || r.status == 401 => {
                    PluginError::Denied(format!(
                        "{m} — check `tenant_id`, `client_id` and `client_secret`"
                    ))
                }
                e => e,
            });
        }
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| PluginError::Internal(format!("{what}: answer is not JSON: {e}")))?;
        let t = v["access_token"]
            .as_str()
            .ok_or_else(|| PluginError::Internal(format!("{what}: no access_token in the answer")))?
            .to_owned();
        let life = v["expires_in"]
            .as_u64()
            .or_else(|| v["expires_in"].as_str()?.parse().ok())
            .unwrap_or(300);
        self.token =
            Some((t.clone(), Instant::now() + Duration::from_secs(life.saturating_sub(60))));
        Ok(t)
    }

    /// One ARM request on a resource id (path), with `api-version`.
    fn send(
        &mut self,
        method: &'static str,
        id: &str,
        api: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Response, PluginError> {
        let token = self.token()?;
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let mut headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
        if method == "PUT" || method == "POST" {
            headers.push(("content-type".into(), "application/json".into()));
            headers.push(("content-length".into(), body.len().to_string()));
        }
        let r = http::send(
            &Request {
                method,
                scheme: self.scheme.clone(),
                authority: self.authority.clone(),
                path_and_query: format!("{}{id}?api-version={api}", self.base_path),
                headers,
                body,
            },
            self.timeout_ms,
        )
        .map_err(|e| map_transport(e, what))?;
        if r.status == 401 {
            // An expired cached token: the next call fetches a new one.
            self.token = None;
        }
        Ok(r)
    }

    fn call(
        &mut self,
        method: &'static str,
        id: &str,
        api: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, PluginError> {
        let r = self.send(method, id, api, body, what)?;
        if !(200..300).contains(&r.status) {
            return Err(arm_error(&r, what));
        }
        if r.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| PluginError::Internal(format!("{what}: answer is not JSON: {e}")))
    }

    /// PUTs a resource and waits (until `deadline`) for its provisioning to succeed.
    fn put_and_wait(
        &mut self,
        id: &str,
        api: &str,
        body: &Value,
        what: &str,
        deadline: Instant,
    ) -> Result<(), PluginError> {
        let mut v = self.call("PUT", id, api, Some(body), what)?;
        let mut pause = Duration::from_millis(100);
        loop {
            match v["properties"]["provisioningState"].as_str().unwrap_or("Succeeded") {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
                    return Err(PluginError::Internal(format!(
                        "{what}: provisioning {}",
                        v["properties"]["provisioningState"]
                    )));
                }
                _ if Instant::now() >= deadline => {
                    return Err(PluginError::Retryable(format!(
                        "{what}: still provisioning; call again to keep waiting"
                    )));
                }
                _ => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                    v = self.call("GET", id, api, None, what)?;
                }
            }
        }
    }

    /// The request body of a VM, given its disk and NIC ids; public for tests.
    pub fn vm_body(
        &self,
        spec: &VmSpec,
        disk_ids: &[String],
        nic_ids: &[String],
    ) -> Result<Value, PluginError> {
        let size = match &self.vm_size {
            Some(s) => s.clone(),
            None => pick_size(spec.cpus, spec.memory_mib)?.to_owned(),
        };
        let data: Vec<Value> = disk_ids
            .iter()
            .skip(1)
            .enumerate()
            .map(|(lun, id)| json!({"lun": lun, "createOption": "Attach", "deleteOption": "Delete", "managedDisk": {"id": id}}))
            .collect();
        let nics: Vec<Value> = nic_ids
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"id": id, "properties": {"primary": i == 0, "deleteOption": "Delete"}}))
            .collect();
        Ok(json!({
            "location": self.location,
            "tags": {"lifeboat": if spec.isolated { "test-failover" } else { "failover" }},
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {
                    "osDisk": {
                        "osType": self.os_type,
                        "createOption": "Attach",
                        "deleteOption": "Delete",
                        "managedDisk": {"id": disk_ids[0]},
                    },
                    "dataDisks": data,
                },
                "networkProfile": {"networkInterfaces": nics},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
            },
        }))
    }

    /// Creates the VM of `spec`; `disks` are (disk id, page blob URL), boot disk first.
    pub fn create_vm(
        &mut self,
        spec: &VmSpec,
        disks: &[(String, String)],
        account: &str,
    ) -> Result<String, PluginError> {
        if disks.is_empty() {
            return Err(invalid(format!("VM {}: no disks; the boot disk comes first", spec.name)));
        }
        let deadline = Instant::now() + self.wait;
        let vm = spec.name.clone();
        let storage_account = self
            .storage_account_id
            .clone()
            .unwrap_or_else(|| self.id("Microsoft.Storage/storageAccounts", account));
        let generation = match spec.firmware {
            Firmware::Bios => "V1",
            Firmware::Uefi => "V2",
        };
        let mut disk_ids = Vec::new();
        for (i, (disk, url)) in disks.iter().enumerate() {
            let name = if i == 0 { format!("{vm}-osdisk") } else { format!("{vm}-data{i}") };
            let id = self.id("Microsoft.Compute/disks", &name);
            let mut props = json!({
                "creationData": {"createOption": "Import", "sourceUri": url, "storageAccountId": storage_account},
            });
            if i == 0 {
                props["osType"] = json!(self.os_type);
                props["hyperVGeneration"] = json!(generation);
            }
            let body = json!({
                "location": self.location,
                "sku": {"name": self.disk_sku},
                "tags": {"lifeboat-disk": disk},
                "properties": props,
            });
            self.put_and_wait(
                &id,
                DISK_API,
                &body,
                &format!("importing disk {disk} for VM {vm}"),
                deadline,
            )?;
            disk_ids.push(id);
        }
        let mut networks: Vec<(String, Option<String>)> = Vec::new();
        for n in &spec.nics {
            let net = if spec.isolated {
                self.isolated_subnet.clone().ok_or_else(|| {
                    invalid("test failover needs setting `isolated_subnet` (an isolated subnet id or <vnet>/<subnet>)".into())
                })?
            } else {
                n.network.clone()
            };
            networks.push((net, n.ip.clone()));
        }
        if networks.is_empty() {
            let fallback =
                if spec.isolated { self.isolated_subnet.clone() } else { self.subnet.clone() };
            let net = fallback.ok_or_else(|| {
                invalid(format!(
                    "VM {vm} has no NIC and no default subnet: Azure VMs need one (set `subnet`/`isolated_subnet`)"
                ))
            })?;
            networks.push((net, None));
        }
        let mut nic_ids = Vec::new();
        for (i, (net, ip)) in networks.iter().enumerate() {
            let id = self.id("Microsoft.Network/networkInterfaces", &format!("{vm}-nic{i}"));
            let mut ipconf = json!({"subnet": {"id": self.subnet_id(net)?}, "privateIPAllocationMethod": "Dynamic"});
            if let Some(ip) = ip {
                let addr = ip.split('/').next().unwrap_or(ip);
                ipconf["privateIPAllocationMethod"] = json!("Static");
                ipconf["privateIPAddress"] = json!(addr);
            }
            let body = json!({
                "location": self.location,
                "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": ipconf}]},
            });
            self.put_and_wait(
                &id,
                NETWORK_API,
                &body,
                &format!("creating NIC {i} of VM {vm}"),
                deadline,
            )?;
            nic_ids.push(id);
        }
        let body = self.vm_body(spec, &disk_ids, &nic_ids)?;
        let id = self.id("Microsoft.Compute/virtualMachines", &vm);
        self.put_and_wait(&id, COMPUTE_API, &body, &format!("creating VM {vm}"), deadline)?;
        Ok(vm)
    }

    /// Deletes a VM (its NICs and managed disks go with it) and waits until it is gone.
    pub fn delete_vm(&mut self, vm: &str) -> Result<(), PluginError> {
        let id = self.id("Microsoft.Compute/virtualMachines", vm);
        let what = format!("deleting VM {vm}");
        let r = self.send("DELETE", &id, COMPUTE_API, None, &what)?;
        match r.status {
            204 | 404 => return Err(PluginError::NotFound(format!("VM {vm} does not exist"))),
            200 | 202 => {}
            _ => return Err(arm_error(&r, &what)),
        }
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let r = self.send("GET", &id, COMPUTE_API, None, &what)?;
            match r.status {
                404 => return Ok(()),
                200 if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                200 => {
                    return Err(PluginError::Retryable(format!(
                        "{what}: still deleting; call again to keep waiting"
                    )));
                }
                _ => return Err(arm_error(&r, &what)),
            }
        }
    }

    /// The VM's power state from its instance view.
    pub fn vm_state(&mut self, vm: &str) -> Result<PowerState, PluginError> {
        let id = format!("{}/instanceView", self.id("Microsoft.Compute/virtualMachines", vm));
        let v =
            self.call("GET", &id, COMPUTE_API, None, &format!("reading the state of VM {vm}"))?;
        Ok(power_state(&v))
    }
}

/// `PowerState/...` of an instance view.
pub fn power_state(view: &Value) -> PowerState {
    let codes = view["statuses"].as_array().cloned().unwrap_or_default();
    for s in codes {
        match s["code"].as_str().unwrap_or("") {
            "PowerState/running" | "PowerState/starting" => return PowerState::Running,
            "PowerState/stopped"
            | "PowerState/deallocated"
            | "PowerState/deallocating"
            | "PowerState/stopping" => {
                return PowerState::Stopped;
            }
            _ => {}
        }
    }
    PowerState::Unknown
}

/// Maps an ARM error answer (`{"error": {"code", "message"}}`).
pub fn arm_error(r: &Response, what: &str) -> PluginError {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().or_else(|| v["error"].as_str()).unwrap_or("");
    let msg =
        v["error"]["message"].as_str().or_else(|| v["error_description"].as_str()).unwrap_or("");
    let detail = format!("{what}: HTTP {} {code} {msg}", r.status).trim_end().to_owned();
    match r.status {
        404 => PluginError::NotFound(detail),
        401 | 403 => PluginError::Denied(detail),
        409 | 408 | 429 => PluginError::Retryable(detail),
        500..=599 => PluginError::Retryable(detail),
        400..=499 => PluginError::Invalid(detail),
        _ => PluginError::Internal(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_power_states_and_errors() {
        assert_eq!(pick_size(2, 2048).unwrap(), "Standard_B2s");
        assert_eq!(pick_size(2, 12_000).unwrap(), "Standard_E2s_v5");
        assert_eq!(pick_size(3, 8192).unwrap(), "Standard_D4s_v5");
        assert!(pick_size(128, 1).is_err());
        let v = json!({"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/deallocated"}]});
        assert_eq!(power_state(&v), PowerState::Stopped);
        assert_eq!(
            power_state(&json!({"statuses": [{"code": "PowerState/running"}]})),
            PowerState::Running
        );
        assert_eq!(power_state(&json!({})), PowerState::Unknown);
        let r = Response {
            status: 409,
            headers: vec![],
            body: br#"{"error":{"code":"OperationNotAllowed","message":"busy"}}"#.to_vec(),
        };
        assert!(
            matches!(arm_error(&r, "x"), PluginError::Retryable(m) if m.contains("OperationNotAllowed"))
        );
        let r = Response { status: 400, headers: vec![], body: b"<html>".to_vec() };
        assert!(matches!(arm_error(&r, "x"), PluginError::Invalid(_)));
    }
}
