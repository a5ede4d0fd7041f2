//! vSphere Web Services (SOAP, `urn:vim25`) over the host's `wasi:http`: requests written
//! by hand, answers read with roxmltree, faults mapped to the plugin's errors, the session
//! cookie kept and renewed by logging in again when vSphere says `NotAuthenticated`.

use lifeboat_sdk::PluginError;
use lifeboat_sdk::http::{self, Request, Response, TransportError};
use roxmltree::{Document, Node};

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// Escapes text for an XML element or attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A managed object reference: its type and id (`VirtualMachine`, `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moref {
    pub kind: String,
    pub value: String,
}

impl Moref {
    pub fn new(kind: &str, value: &str) -> Moref {
        Moref { kind: kind.to_owned(), value: value.to_owned() }
    }
    /// `<tag type="kind">value</tag>`
    pub fn xml(&self, tag: &str) -> String {
        format!("<{tag} type=\"{}\">{}</{tag}>", esc(&self.kind), esc(&self.value))
    }
    /// The reference an element holds (`<x type="Folder">group-d1</x>`).
    pub fn of(node: Node) -> Option<Moref> {
        // `type` without a namespace: a property value also carries `xsi:type`
        // (`ManagedObjectReference`), which roxmltree would match by local name.
        let kind = node.attributes().find(|a| a.namespace().is_none() && a.name() == "type")?;
        Some(Moref::new(kind.value(), node.text()?.trim()))
    }
}

/// The managers a session uses, from `RetrieveServiceContent` (their ids differ between
/// vCenter and ESXi).
#[derive(Debug, Clone)]
pub struct ServiceContent {
    pub property_collector: Moref,
    pub search_index: Moref,
    pub session_manager: Moref,
    pub file_manager: Moref,
    pub virtual_disk_manager: Moref,
    pub about: String,
}

/// The `xsi:type` of an element, if it has one.
pub fn xsi_type<'a>(n: Node<'a, '_>) -> Option<&'a str> {
    n.attribute((XSI, "type"))
}

/// The first element child of `n` named `name`.
pub fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Element children of `n` named `name`.
pub fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The trimmed text of child `name` of `n`.
pub fn text(n: Node, name: &str) -> Option<String> {
    child(n, name).map(|c| c.text().unwrap_or("").trim().to_owned())
}

/// The first descendant element of `n` named `name`.
pub fn find<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.descendants().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// A SOAP fault, or a task's error: the fault's type (`InvalidLogin`, `FileNotFound`, …)
/// and vSphere's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: String,
    pub message: String,
}

impl Fault {
    /// The plugin's error for this fault while doing `what`.
    pub fn error(&self, what: &str) -> PluginError {
        let Fault { kind, message } = self;
        let m = if message.is_empty() {
            format!("{what}: vSphere fault {kind}")
        } else {
            format!("{what}: {message} (vSphere fault {kind})")
        };
        match kind.as_str() {
            "InvalidLogin" | "InvalidLocale" => PluginError::Denied(format!(
                "{what}: vSphere refused the user name or password (InvalidLogin): check the \
                 `username` and `password` settings"
            )),
            "NoPermission" | "NotSupportedHost" | "RestrictedVersion" | "SecurityError" => {
                PluginError::Denied(format!(
                    "{m}: the vSphere user lacks a privilege this target needs \
                     (docs/targets/vmware.md lists them)"
                ))
            }
            "NotAuthenticated" => PluginError::Denied(format!("{m}: the session was refused")),
            "ManagedObjectNotFound"
            | "FileNotFound"
            | "NotFound"
            | "InvalidDatastorePath"
            | "InvalidDatastore" => PluginError::NotFound(m),
            "NoDiskSpace" | "InsufficientDisks" | "InsufficientStorageSpace" | "OutOfBounds" => {
                PluginError::Retryable(format!(
                    "{m}: the datastore is full; free space or grow it (the call is retried)"
                ))
            }
            "TaskInProgress" | "FileLocked" | "ResourceInUse" | "HostCommunication"
            | "HostNotConnected" | "HostNotReachable" | "RequestCanceled" | "Timedout"
            | "ConcurrentAccess" | "SystemError" => PluginError::Retryable(m),
            "InvalidArgument" | "InvalidRequest" | "InvalidDeviceSpec" | "InvalidPowerState"
            | "InvalidState" | "InvalidName" | "DuplicateName" | "FileAlreadyExists"
            | "InvalidProperty" | "NotSupported" | "NotImplemented" | "InvalidType"
            | "AlreadyExists" | "InvalidController" | "CannotCreateFile" => PluginError::Invalid(m),
            _ => PluginError::Internal(m),
        }
    }
}

/// The fault inside a `<fault>`/`<detail>` element's first child: its `xsi:type` (or tag
/// name without `Fault`).
fn fault_kind(n: Node) -> Option<String> {
    let f = n.children().find(|c| c.is_element())?;
    let kind = xsi_type(f).map(str::to_owned).unwrap_or_else(|| {
        let t = f.tag_name().name();
        t.strip_suffix("Fault").unwrap_or(t).to_owned()
    });
    Some(kind.rsplit(':').next().unwrap_or(&kind).to_owned())
}

/// The SOAP fault of a response body, if it is one.
pub fn parse_fault(doc: &Document) -> Option<Fault> {
    let f = doc.descendants().find(|n| n.has_tag_name((SOAPENV, "Fault")))?;
    let message = text(f, "faultstring").unwrap_or_default();
    let kind = child(f, "detail").and_then(fault_kind).unwrap_or_else(|| "SystemError".into());
    Some(Fault { kind, message })
}

/// A task's `info.error` (a `LocalizedMethodFault`).
pub fn parse_task_error(error: Node) -> Fault {
    let kind = child(error, "fault")
        .and_then(xsi_type)
        .map(|k| k.rsplit(':').next().unwrap_or(k).to_owned())
        .unwrap_or_else(|| "SystemError".into());
    let message = text(error, "localizedMessage").unwrap_or_default();
    Fault { kind, message }
}

/// Parses a response body, refusing anything that is not well-formed XML.
pub fn parse(body: &str) -> Result<Document<'_>, PluginError> {
    let opts = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    Document::parse_with_options(body, opts).map_err(|e| {
        PluginError::Internal(format!("vSphere answered something that is not XML: {e}"))
    })
}

/// A vSphere endpoint and its session.
pub struct Client {
    scheme: String,
    authority: String,
    path: String,
    api_version: String,
    timeout_ms: u64,
    user: String,
    password: String,
    cookie: Option<String>,
    sc: Option<ServiceContent>,
}

fn transport(what: &str, e: TransportError) -> PluginError {
    match e {
        TransportError::Denied(m) => PluginError::Denied(format!("{what}: {m}")),
        TransportError::Unavailable(m) => {
            PluginError::Retryable(format!("{what}: cannot reach vSphere: {m}"))
        }
        TransportError::Invalid(m) => PluginError::Invalid(format!("{what}: {m}")),
    }
}

impl Client {
    /// A client of the SDK endpoint `url` (`https://vcenter.example/sdk`).
    pub fn new(
        url: &str,
        api_version: &str,
        timeout_ms: u64,
        user: &str,
        password: &str,
    ) -> Result<Client, PluginError> {
        let (scheme, authority, path) = http::split_url(url).ok_or_else(|| {
            PluginError::Invalid(format!("url {url:?}: expected https://host[:port]/sdk"))
        })?;
        let path = if path.is_empty() { "/sdk".to_owned() } else { path };
        Ok(Client {
            scheme,
            authority,
            path,
            api_version: api_version.to_owned(),
            timeout_ms,
            user: user.to_owned(),
            password: password.to_owned(),
            cookie: None,
            sc: None,
        })
    }

    /// Sends an HTTP request to the vSphere host (`path_and_query` from `/`), with the
    /// session cookie.
    pub fn http(
        &self,
        method: &'static str,
        path_and_query: String,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Response, PluginError> {
        let mut headers: Vec<(String, String)> =
            extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        if let Some(c) = &self.cookie {
            headers.push(("cookie".into(), format!("vmware_soap_session={c}")));
        }
        let req = Request {
            method,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            path_and_query,
            headers,
            body,
        };
        http::send(&req, self.timeout_ms).map_err(|e| transport(&self.authority, e))
    }

    /// One SOAP call, without logging in: the response body, or the fault.
    fn post(&mut self, body: &str) -> Result<Result<String, Fault>, PluginError> {
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
             xmlns:soapenv=\"{SOAPENV}\" xmlns:xsi=\"{XSI}\" xmlns=\"urn:vim25\">\
             <soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
        );
        let action = format!("\"urn:vim25/{}\"", self.api_version);
        let resp = self.http(
            "POST",
            self.path.clone(),
            envelope.into_bytes(),
            &[("content-type", "text/xml; charset=utf-8"), ("soapaction", &action)],
        )?;
        if let Some(c) =
            resp.headers.iter().filter(|(k, _)| k == "set-cookie").find_map(|(_, v)| {
                v.split(';').next()?.trim().strip_prefix("vmware_soap_session=").map(str::to_owned)
            })
        {
            self.cookie = Some(c.trim_matches('"').to_owned());
        }
        let text = String::from_utf8(resp.body).map_err(|_| {
            PluginError::Internal("vSphere answered a body that is not UTF-8".into())
        })?;
        if resp.status == 200 {
            return Ok(Ok(text));
        }
        if let Ok(doc) = parse(&text)
            && let Some(f) = parse_fault(&doc)
        {
            return Ok(Err(f));
        }
        let excerpt: String = text.chars().take(200).collect();
        Err(match resp.status {
            401 | 403 => {
                PluginError::Denied(format!("vSphere answered {}: {excerpt}", resp.status))
            }
            404 => PluginError::Invalid(format!(
                "{}{} answered 404: is `url` the SDK endpoint (https://host/sdk)?",
                self.authority, self.path
            )),
            429 | 500..=599 => {
                PluginError::Retryable(format!("vSphere answered {}: {excerpt}", resp.status))
            }
            s => PluginError::Invalid(format!("vSphere answered {s}: {excerpt}")),
        })
    }

    /// The service content, logging in first if there is no session.
    pub fn content(&mut self) -> Result<ServiceContent, PluginError> {
        if self.sc.is_none() || self.cookie.is_none() {
            self.login()?;
        }
        self.sc.clone().ok_or_else(|| PluginError::Internal("no service content".into()))
    }

    /// Reads the service content and logs in (a new session).
    pub fn login(&mut self) -> Result<(), PluginError> {
        self.cookie = None;
        let body = self
            .post("<RetrieveServiceContent><_this type=\"ServiceInstance\">ServiceInstance</_this></RetrieveServiceContent>")?
            .map_err(|f| f.error("reading vSphere's service content"))?;
        let doc = parse(&body)?;
        let rv = find(doc.root(), "returnval").ok_or_else(|| {
            PluginError::Internal("RetrieveServiceContent answered no returnval".into())
        })?;
        let mo = |name: &str| {
            child(rv, name).and_then(Moref::of).ok_or_else(|| {
                PluginError::Internal(format!("vSphere's service content has no {name}"))
            })
        };
        let about = child(rv, "about")
            .and_then(|a| text(a, "fullName"))
            .unwrap_or_else(|| "vSphere".into());
        let sc = ServiceContent {
            property_collector: mo("propertyCollector")?,
            search_index: mo("searchIndex")?,
            session_manager: mo("sessionManager")?,
            file_manager: mo("fileManager")?,
            virtual_disk_manager: mo("virtualDiskManager")?,
            about,
        };
        let login = format!(
            "<Login>{}<userName>{}</userName><password>{}</password></Login>",
            sc.session_manager.xml("_this"),
            esc(&self.user),
            esc(&self.password)
        );
        self.post(&login)?.map_err(|f| f.error(&format!("logging in to {}", self.authority)))?;
        if self.cookie.is_none() {
            return Err(PluginError::Internal(
                "vSphere accepted the login but set no vmware_soap_session cookie".into(),
            ));
        }
        self.sc = Some(sc);
        Ok(())
    }

    /// One SOAP call in the session (logging in first, and once more if the session
    /// expired): the response body, or the fault as the plugin's error for `what`.
    pub fn call(&mut self, what: &str, body: &str) -> Result<String, PluginError> {
        self.content()?;
        match self.post(body)? {
            Ok(t) => Ok(t),
            Err(f) if f.kind == "NotAuthenticated" => {
                self.login()?;
                self.post(body)?.map_err(|f| f.error(what))
            }
            Err(f) => Err(f.error(what)),
        }
    }

    /// Like [`Client::call`], but a fault is returned as a value (the caller handles
    /// some kinds itself, such as `FileAlreadyExists`).
    pub fn call_fault(
        &mut self,
        what: &str,
        body: &str,
    ) -> Result<Result<String, Fault>, PluginError> {
        self.content()?;
        match self.post(body)? {
            Err(f) if f.kind == "NotAuthenticated" => {
                self.login()?;
                self.post(body)
            }
            r => Ok(r),
        }
        .map_err(|e| match e {
            PluginError::Retryable(m) => PluginError::Retryable(format!("{what}: {m}")),
            e => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_vcsim_and_vcenter_shapes() {
        // vcsim / vCenter: the detail's child names the fault by xsi:type.
        let body = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let f = parse_fault(&parse(body).unwrap()).unwrap();
        assert_eq!(f, Fault { kind: "InvalidLogin".into(), message: "Login failure".into() });
        assert!(matches!(f.error("x"), PluginError::Denied(m) if m.contains("password")));
        // No xsi:type: the tag name without `Fault`.
        let body = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultstring>gone</faultstring><detail><ManagedObjectNotFoundFault/></detail></e:Fault></e:Body></e:Envelope>"#;
        let f = parse_fault(&parse(body).unwrap()).unwrap();
        assert_eq!(f.kind, "ManagedObjectNotFound");
        assert!(matches!(f.error("x"), PluginError::NotFound(_)));
        // No detail at all.
        let body = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultstring>boom</faultstring></e:Fault></e:Body></e:Envelope>"#;
        assert_eq!(parse_fault(&parse(body).unwrap()).unwrap().kind, "SystemError");
    }

    #[test]
    fn fault_kinds_map_to_what_the_host_does_next() {
        let e = |k: &str| Fault { kind: k.into(), message: "m".into() }.error("w");
        assert!(matches!(e("NoPermission"), PluginError::Denied(m) if m.contains("privilege")));
        assert!(matches!(e("NoDiskSpace"), PluginError::Retryable(m) if m.contains("full")));
        assert!(matches!(e("FileLocked"), PluginError::Retryable(_)));
        assert!(matches!(e("FileNotFound"), PluginError::NotFound(_)));
        assert!(matches!(e("InvalidDeviceSpec"), PluginError::Invalid(_)));
        assert!(
            matches!(e("SomethingNew"), PluginError::Internal(m) if m.contains("SomethingNew"))
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for body in ["", "<", "<a><b></a>", "\u{0}", "<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>"] {
            assert!(parse(body).is_err(), "{body:?}");
        }
        // Well-formed but not a fault: none found.
        assert!(parse_fault(&parse("<a/>").unwrap()).is_none());
        let task = parse(r#"<error xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><fault xsi:type="vim25:FileNotFound"/><localizedMessage>no file</localizedMessage></error>"#).unwrap();
        let f = parse_task_error(task.root_element());
        assert_eq!(f, Fault { kind: "FileNotFound".into(), message: "no file".into() });
    }

    #[test]
    fn morefs_ignore_the_xsi_type() {
        let doc = parse(r#"<val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="ManagedObjectReference" type="HostDatastoreBrowser">hostdatastorebrowser-27</val>"#).unwrap();
        assert_eq!(
            Moref::of(doc.root_element()).unwrap(),
            Moref::new("HostDatastoreBrowser", "hostdatastorebrowser-27")
        );
        let doc = parse(r#"<val>x</val>"#).unwrap();
        assert!(Moref::of(doc.root_element()).is_none());
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(Moref::new("Datastore", "x&y").xml("ds"), "<ds type=\"Datastore\">x&amp;y</ds>");
    }
}
