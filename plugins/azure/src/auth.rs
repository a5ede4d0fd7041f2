//! Shared Key authorization for the Blob service (version 2009-09-19 and later), as
//! documented in "Authorize with Shared Key" of the Azure Storage REST reference.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The headers that go into the string-to-sign by position, in order.
const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Collapses runs of whitespace to one space and trims, as the canonical form asks.
fn unfold(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `x-ms-*` headers, lowercased, sorted by name, one `name:value\n` each.
pub fn canonicalized_headers(headers: &[(String, String)]) -> String {
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), unfold(v)))
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .collect();
    ms.sort();
    ms.into_iter().map(|(k, v)| format!("{k}:{v}\n")).collect()
}

/// `/<account><path>` then, per query parameter sorted by lowercased name,
/// `\n<name>:<values sorted, comma-separated>` (values decoded).
pub fn canonicalized_resource(account: &str, path: &str, query: &[(String, String)]) -> String {
    let mut out = format!("/{account}{path}");
    let mut names: Vec<String> = query.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    for n in names {
        let mut values: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&n))
            .map(|(_, v)| v.as_str())
            .collect();
        values.sort();
        out.push_str(&format!("\n{n}:{}", values.join(",")));
    }
    out
}

/// The string-to-sign of a Blob service request.
pub fn string_to_sign(
    method: &str,
    account: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> String {
    let mut s = format!("{method}\n");
    for h in STANDARD_HEADERS {
        let v = header(headers, h);
        // Since 2015-02-21 a zero Content-Length is signed as the empty string.
        let v = if h == "content-length" && v == "0" { "" } else { v };
        s.push_str(v);
        s.push('\n');
    }
    s.push_str(&canonicalized_headers(headers));
    s.push_str(&canonicalized_resource(account, path, query));
    s
}

/// A storage account's name and decoded key (kept as the HMAC keyed with it).
#[derive(Clone)]
pub struct SharedKey {
    pub account: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey").field("account", &self.account).finish_non_exhaustive()
    }
}

impl SharedKey {
    /// `key` is the base64 account key as the portal shows it.
    pub fn new(account: &str, key_b64: &str) -> Result<SharedKey, String> {
        let key = B64.decode(key_b64.trim()).map_err(|e| {
            format!("setting `key` is not valid base64 ({e}); use the storage account key as shown by Azure")
        })?;
        if key.is_empty() {
            return Err("setting `key` is empty".into());
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .map_err(|e| format!("setting `key` is not usable as an HMAC-SHA256 key ({e})"))?;
        Ok(SharedKey { account: account.to_owned(), mac })
    }

    /// Base64 HMAC-SHA256 of `s` under the account key.
    pub fn signature(&self, s: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(s.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// The `Authorization` header value for a request.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
    ) -> String {
        let sts = string_to_sign(method, &self.account, path, query, headers);
        format!("SharedKey {}:{}", self.account, self.signature(&sts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The examples of "Constructing the canonicalized resource string" in the Azure
    /// Storage REST docs (Shared Key, 2009-09-19 and later).
    #[test]
    fn canonicalized_resource_matches_the_documented_examples() {
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                "/mycontainer",
                &kv(&[("restype", "container"), ("comp", "metadata")])
            ),
            "/myaccount/mycontainer\ncomp:metadata\nrestype:container"
        );
        assert_eq!(
            canonicalized_resource(
                "myaccount",
                "/mycontainer",
                &kv(&[
                    ("restype", "container"),
                    ("comp", "list"),
                    ("include", "snapshots"),
                    ("include", "metadata"),
                    ("include", "uncommittedblobs"),
                ])
            ),
            "/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
        );
        assert_eq!(
            canonicalized_resource("myaccount", "/mycontainer/myblob", &[]),
            "/myaccount/mycontainer/myblob"
        );
        // The emulator's path-style URLs carry the account in the path, so it appears twice.
        assert_eq!(
            canonicalized_resource("devstoreaccount1", "/devstoreaccount1/c/disks/d0", &[]),
            "/devstoreaccount1/devstoreaccount1/c/disks/d0"
        );
    }

    /// The documented string-to-sign example: a Set Container Metadata request with
    /// x-ms-date and x-ms-version and a timeout parameter.
    #[test]
    fn string_to_sign_matches_the_documented_example() {
        let headers = kv(&[
            ("x-ms-version", "2009-09-19"),
            ("x-ms-date", "Sun, 11 Oct 2009 21:49:13 GMT"),
            ("Content-Length", "0"),
        ]);
        let s = string_to_sign(
            "GET",
            "myaccount",
            "/myaccount/mycontainer",
            &kv(&[("restype", "container"), ("comp", "metadata"), ("timeout", "20")]),
            &headers,
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n/myaccount/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20"
        );
    }

    #[test]
    fn standard_headers_go_in_their_slots_and_x_ms_headers_are_sorted_and_unfolded() {
        let headers = kv(&[
            ("X-MS-Version", "2021-08-06"),
            ("Content-Length", "4096"),
            ("x-ms-range", "bytes=0-4095"),
            ("If-None-Match", "*"),
            ("x-ms-date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("x-ms-meta-a", "  one   two "),
            ("Content-Type", "application/octet-stream"),
        ]);
        let s = string_to_sign("PUT", "a", "/c/b", &kv(&[("comp", "page")]), &headers);
        let lines: Vec<&str> = s.split('\n').collect();
        assert_eq!(lines[0], "PUT");
        assert_eq!(lines[3], "4096");
        assert_eq!(lines[5], "application/octet-stream");
        assert_eq!(lines[9], "*");
        assert_eq!(
            &lines[12..],
            &[
                "x-ms-date:Mon, 01 Jan 2024 00:00:00 GMT",
                "x-ms-meta-a:one two",
                "x-ms-range:bytes=0-4095",
                "x-ms-version:2021-08-06",
                "/a/c/b",
                "comp:page"
            ]
        );
    }

    /// HMAC-SHA256 with the emulator's published account key, checked against
    /// `printf '%s' "$s" | openssl dgst -sha256 -mac HMAC -macopt hexkey:<key> -binary | base64`.
    #[test]
    fn signature_is_base64_hmac_sha256_under_the_decoded_key() {
        let k = SharedKey::new(
            "devstoreaccount1",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        )
        .unwrap();
        assert_eq!(k.signature("GET\n"), SIG_GET);
        assert!(SharedKey::new("a", "not base64!").unwrap_err().contains("base64"));
        assert!(format!("{k:?}").contains("devstoreaccount1"));
        assert!(!format!("{k:?}").contains("Eby8"));
    }

    const SIG_GET: &str = "/ZZsmidvu/o1IWuAI6fRY2fmdvnXEMtMILD8Y+sZWjA=";
}
