//! The Blob service REST calls the target needs, signed with Shared Key.

use crate::auth::SharedKey;
use crate::http::{self, Request, Response, TransportError};
use crate::xml::{self, BlobItem};
use lifeboat_sdk::PluginError;

/// The API version sent as `x-ms-version` unless the settings choose another.
pub const DEFAULT_API_VERSION: &str = "2021-08-06";

/// Where the container lives and how to sign for it.
#[derive(Debug, Clone)]
pub struct BlobService {
    pub key: SharedKey,
    pub scheme: String,
    pub authority: String,
    /// Path before the container: `/devstoreaccount1` for the emulator, empty on Azure.
    pub base_path: String,
    pub container: String,
    pub api_version: String,
    pub timeout_ms: u64,
}

/// Properties of one blob, from its HEAD.
#[derive(Debug, Clone, Default)]
pub struct Props {
    pub content_length: u64,
    /// Our `lifeboatsize` metadata: the disk's size before rounding to 512.
    pub logical_size: Option<u64>,
    pub copy_status: Option<String>,
    pub copy_source: Option<String>,
    pub copy_description: Option<String>,
}

/// Formats a Unix time as an RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn rfc1123(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        d,
        MO[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
#[expect(
    clippy::cast_possible_truncation,
    reason = "doy is in 0..=365 and mp in 0..=11 by the algorithm, so the day is in 1..=31 and the month in 1..=12"
)]
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Maps a failed Blob service answer to the error the host acts on.
pub fn map_error(status: u16, code: &str, message: &str, what: &str) -> PluginError {
    let mut detail = if code.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: {code} (HTTP {status})")
    };
    if !message.is_empty() {
        detail.push_str(": ");
        detail.push_str(message);
    }
    match code {
        "LeaseAlreadyPresent"
        | "LeaseIdMissing"
        | "LeaseIdMismatchWithBlobOperation"
        | "LeaseIdMismatchWithLeaseOperation"
        | "LeaseIsBreakingAndCannotBeAcquired"
        | "LeaseIsBrokenAndCannotBeRenewed"
        | "LeaseIsBreakingAndCannotBeChanged"
        | "LeaseIsBrokenAndCannotBeChanged" => {
            return PluginError::Retryable(format!(
                "{detail} — the blob is leased by another writer (another Lifeboat appliance \
                 writing the same disk?); this appliance retries until that lease is released \
                 or expires"
            ));
        }
        "LeaseLost" | "LeaseNotPresentWithBlobOperation" | "LeaseNotPresentWithLeaseOperation" => {
            return PluginError::Retryable(format!(
                "{detail} — this appliance's lease on the blob expired or was broken; it \
                 acquires a new one on retry"
            ));
        }
        "PendingCopyOperation"
        | "ContainerBeingDeleted"
        | "ServerBusy"
        | "OperationTimedOut"
        | "InternalError" => return PluginError::Retryable(detail),
        "SnapshotsPresent" => {
            return PluginError::Invalid(format!(
                "{detail} — the disk still has recovery points; delete them first"
            ));
        }
        "AuthenticationFailed" => {
            return PluginError::Denied(format!(
                "{detail} — check the `account` and `key` settings (and the appliance clock: \
                 requests older than 15 minutes are refused)"
            ));
        }
        _ => {}
    }
    match status {
        404 => PluginError::NotFound(detail),
        401 | 403 => PluginError::Denied(detail),
        408 | 429 => PluginError::Retryable(detail),
        501 => PluginError::Invalid(format!("{detail} — not implemented by this service")),
        500..=599 => PluginError::Retryable(detail),
        400..=499 => PluginError::Invalid(detail),
        _ => PluginError::Internal(detail),
    }
}

/// A transport failure as a plugin error.
pub fn map_transport(e: TransportError, what: &str) -> PluginError {
    match e {
        TransportError::Denied(m) => PluginError::Denied(format!("{what}: {m}")),
        TransportError::Unavailable(m) => {
            PluginError::Retryable(format!("{what}: cannot reach the service: {m}"))
        }
        TransportError::Invalid(m) => PluginError::Invalid(format!("{what}: {m}")),
    }
}

/// The error an answer carries (`x-ms-error-code`, else the XML body's `<Code>`).
pub fn error_of(resp: &Response, what: &str) -> PluginError {
    let (body_code, message) = xml::parse_error(&resp.body).unwrap_or_default();
    let code = resp.header("x-ms-error-code").map(str::to_owned).unwrap_or(body_code);
    map_error(resp.status, &code, &message, what)
}

/// The `x-ms-error-code` (or body code) of an answer.
pub fn code_of(resp: &Response) -> String {
    resp.header("x-ms-error-code")
        .map(str::to_owned)
        .or_else(|| xml::parse_error(&resp.body).map(|(c, _)| c))
        .unwrap_or_default()
}

fn ok(resp: Response, what: &str) -> Result<Response, PluginError> {
    if (200..300).contains(&resp.status) { Ok(resp) } else { Err(error_of(&resp, what)) }
}

impl BlobService {
    /// The URL path of a blob (or of the container when `blob` is `None`).
    pub fn path(&self, blob: Option<&str>) -> String {
        match blob {
            Some(b) => format!("{}/{}/{}", self.base_path, self.container, b),
            None => format!("{}/{}", self.base_path, self.container),
        }
    }

    /// The full URL of a blob, optionally of one of its snapshots.
    pub fn url(&self, blob: &str, snapshot: Option<&str>) -> String {
        let mut u = format!("{}://{}{}", self.scheme, self.authority, self.path(Some(blob)));
        if let Some(s) = snapshot {
            u.push_str(&format!("?snapshot={}", http::encode(s)));
        }
        u
    }

    /// Sends one signed request and returns the answer, whatever its status.
    pub fn send(
        &self,
        method: &'static str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: Vec<u8>,
        what: &str,
    ) -> Result<Response, PluginError> {
        let path = self.path(blob);
        let query: Vec<(String, String)> =
            query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut headers: Vec<(String, String)> = vec![
            ("x-ms-date".into(), rfc1123(now_secs())),
            ("x-ms-version".into(), self.api_version.clone()),
        ];
        if method == "PUT" || method == "POST" || !body.is_empty() {
            headers.push(("content-length".into(), body.len().to_string()));
        }
        for (k, v) in extra {
            headers.push((k.to_string(), v.clone()));
        }
        let auth = self.key.authorization(method, &path, &query, &headers);
        headers.push(("authorization".into(), auth));
        let mut pq = path;
        for (i, (k, v)) in query.iter().enumerate() {
            pq.push(if i == 0 { '?' } else { '&' });
            pq.push_str(&format!("{}={}", http::encode(k), http::encode(v)));
        }
        let req = Request {
            method,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            path_and_query: pq,
            headers,
            body,
        };
        http::send(&req, self.timeout_ms).map_err(|e| map_transport(e, what))
    }

    /// Like [`send`](Self::send), failing on any status other than 2xx.
    pub fn call(
        &self,
        method: &'static str,
        blob: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: Vec<u8>,
        what: &str,
    ) -> Result<Response, PluginError> {
        ok(self.send(method, blob, query, extra, body, what)?, what)
    }

    /// Creates the container unless it exists.
    pub fn ensure_container(&self) -> Result<(), PluginError> {
        let what = format!("creating container {}", self.container);
        let r = self.send("PUT", None, &[("restype", "container")], &[], Vec::new(), &what)?;
        if r.status == 201 || (r.status == 409 && code_of(&r) == "ContainerAlreadyExists") {
            return Ok(());
        }
        Err(error_of(&r, &what))
    }

    /// A blob's properties, `None` when it does not exist.
    pub fn head(&self, blob: &str, what: &str) -> Result<Option<Props>, PluginError> {
        let r = self.send("HEAD", Some(blob), &[], &[], Vec::new(), what)?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = ok(r, what)?;
        Ok(Some(Props {
            content_length: r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0),
            logical_size: r.header("x-ms-meta-lifeboatsize").and_then(|v| v.parse().ok()),
            copy_status: r.header("x-ms-copy-status").map(str::to_owned),
            copy_source: r.header("x-ms-copy-source").map(str::to_owned),
            copy_description: r.header("x-ms-copy-status-description").map(str::to_owned),
        }))
    }

    /// Every blob whose name starts with `prefix`, following continuation markers.
    pub fn list(&self, prefix: &str, include: &str) -> Result<Vec<BlobItem>, PluginError> {
        let what = format!("listing blobs under {prefix}");
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> =
                vec![("restype", "container"), ("comp", "list"), ("prefix", prefix)];
            if !include.is_empty() {
                q.push(("include", include));
            }
            if let Some(m) = &marker {
                q.push(("marker", m));
            }
            let r = self.call("GET", None, &q, &[], Vec::new(), &what)?;
            let page = xml::parse_blob_list(&r.body)
                .map_err(|e| PluginError::Internal(format!("{what}: {e}")))?;
            out.extend(page.blobs);
            match page.next_marker {
                Some(m) if Some(&m) != marker.as_ref() => marker = Some(m),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc1123() {
        assert_eq!(rfc1123(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(rfc1123(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(rfc1123(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 GMT");
    }

    #[test]
    fn statuses_and_codes_map_to_plugin_errors() {
        use PluginError as E;
        let m = |s, c| map_error(s, c, "msg", "op");
        assert!(matches!(m(404, "BlobNotFound"), E::NotFound(_)));
        assert!(matches!(m(403, "AuthorizationFailure"), E::Denied(_)));
        assert!(matches!(m(403, "AuthenticationFailed"), E::Denied(x) if x.contains("`key`")));
        assert!(matches!(m(409, "LeaseAlreadyPresent"), E::Retryable(x) if x.contains("another")));
        assert!(matches!(m(412, "LeaseIdMissing"), E::Retryable(_)));
        assert!(matches!(m(412, "LeaseLost"), E::Retryable(_)));
        assert!(matches!(m(409, "SnapshotsPresent"), E::Invalid(_)));
        assert!(matches!(m(409, "BlobAlreadyExists"), E::Invalid(_)));
        assert!(matches!(m(409, "PendingCopyOperation"), E::Retryable(_)));
        assert!(matches!(m(416, "InvalidRange"), E::Invalid(_)));
        assert!(matches!(m(503, "ServerBusy"), E::Retryable(_)));
        assert!(matches!(m(500, ""), E::Retryable(_)));
        assert!(matches!(m(501, "NotImplemented"), E::Invalid(_)));
        assert!(matches!(m(429, ""), E::Retryable(_)));
        assert!(matches!(m(302, ""), E::Internal(_)));
        assert!(matches!(
            map_transport(TransportError::Unavailable("refused".into()), "op"),
            E::Retryable(_)
        ));
        assert!(matches!(map_transport(TransportError::Denied("no".into()), "op"), E::Denied(_)));
    }
}
