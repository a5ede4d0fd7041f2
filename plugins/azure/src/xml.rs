//! The XML the Blob service answers with: List Blobs results and error bodies.

/// One `<Blob>` of a List Blobs result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobItem {
    pub name: String,
    /// Set for snapshots (`include=snapshots`).
    pub snapshot: Option<String>,
    pub content_length: u64,
    /// `include=metadata`: names as sent, lowercased by the service.
    pub metadata: Vec<(String, String)>,
}

/// One page of a List Blobs result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobList {
    pub blobs: Vec<BlobItem>,
    /// Where the next page starts; `None` on the last page.
    pub next_marker: Option<String>,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    n.map(|n| n.text().unwrap_or("").to_owned())
}

fn preview(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
    s.replace(['\n', '\r'], " ")
}

/// Parses a List Blobs response body; a body that is not such a result is an error
/// saying what was wrong, never a panic.
pub fn parse_blob_list(body: &[u8]) -> Result<BlobList, String> {
    let text_body = std::str::from_utf8(body)
        .map_err(|_| format!("List Blobs answer is not UTF-8: {:?}", preview(body)))?;
    // The service may send a byte-order mark before the declaration.
    let text_body = text_body.trim_start_matches('\u{feff}');
    let doc = roxmltree::Document::parse(text_body).map_err(|e| {
        format!("List Blobs answer is not well-formed XML ({e}): {:?}", preview(body))
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "EnumerationResults" {
        return Err(format!(
            "List Blobs answer has root <{}>, expected <EnumerationResults>",
            root.tag_name().name()
        ));
    }
    let mut out = BlobList::default();
    if let Some(blobs) = child(root, "Blobs") {
        for b in blobs.children().filter(|c| c.is_element() && c.tag_name().name() == "Blob") {
            let name = text(child(b, "Name"))
                .filter(|n| !n.is_empty())
                .ok_or_else(|| "List Blobs answer has a <Blob> without <Name>".to_owned())?;
            let snapshot = text(child(b, "Snapshot")).filter(|s| !s.is_empty());
            let content_length =
                match child(b, "Properties").and_then(|p| child(p, "Content-Length")) {
                    Some(n) => {
                        let t = n.text().unwrap_or("").trim();
                        t.parse().map_err(|_| format!("blob {name}: bad <Content-Length> {t:?}"))?
                    }
                    None => 0,
                };
            let metadata = child(b, "Metadata")
                .map(|m| {
                    m.children()
                        .filter(|c| c.is_element())
                        .map(|c| {
                            (
                                c.tag_name().name().to_ascii_lowercase(),
                                c.text().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.blobs.push(BlobItem { name, snapshot, content_length, metadata });
        }
    }
    out.next_marker = text(child(root, "NextMarker")).filter(|m| !m.is_empty());
    Ok(out)
}

/// `(Code, Message)` of an `<Error>` body, if the body is one.
pub fn parse_error(body: &[u8]) -> Option<(String, String)> {
    let t = std::str::from_utf8(body).ok()?.trim_start_matches('\u{feff}');
    let doc = roxmltree::Document::parse(t).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "Error" {
        return None;
    }
    let code = text(child(root, "Code")).unwrap_or_default();
    let msg = text(child(root, "Message")).unwrap_or_default();
    Some((code, msg.lines().next().unwrap_or("").to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="lb">
  <Prefix>disks/</Prefix>
  <Blobs>
    <Blob>
      <Name>disks/m1-d0</Name>
      <Properties>
        <Last-Modified>Mon, 01 Jan 2024 00:00:00 GMT</Last-Modified>
        <Content-Length>4194304</Content-Length>
        <BlobType>PageBlob</BlobType>
        <LeaseStatus>locked</LeaseStatus>
      </Properties>
      <Metadata><lifeboatsize>4194000</lifeboatsize></Metadata>
    </Blob>
    <Blob>
      <Name>disks/m1-d0</Name>
      <Snapshot>2024-01-01T00:00:00.1234567Z</Snapshot>
      <Properties><Content-Length>4194304</Content-Length></Properties>
      <Metadata><LifeboatPoint>p1</LifeboatPoint></Metadata>
    </Blob>
    <BlobPrefix><Name>disks/sub/</Name></BlobPrefix>
  </Blobs>
  <NextMarker>2!80!MDAwMDE2IWRpc2tzL20xLWQxITAwMDAyOCE5OTk5LTEyLTMxVDIzOjU5OjU5Ljk5OTk5OTlaIQ--</NextMarker>
</EnumerationResults>"#;

    #[test]
    fn list_blobs_results_parse() {
        let l = parse_blob_list(LIST.as_bytes()).unwrap();
        assert_eq!(l.blobs.len(), 2);
        assert_eq!(l.blobs[0].name, "disks/m1-d0");
        assert_eq!(l.blobs[0].snapshot, None);
        assert_eq!(l.blobs[0].content_length, 4194304);
        assert_eq!(l.blobs[0].metadata, vec![("lifeboatsize".into(), "4194000".into())]);
        assert_eq!(l.blobs[1].snapshot.as_deref(), Some("2024-01-01T00:00:00.1234567Z"));
        assert_eq!(l.blobs[1].metadata[0].0, "lifeboatpoint");
        assert!(l.next_marker.unwrap().starts_with("2!80!"));

        let empty = parse_blob_list(
            b"\xef\xbb\xbf<?xml version=\"1.0\"?><EnumerationResults><Blobs/><NextMarker/></EnumerationResults>",
        )
        .unwrap();
        assert_eq!(empty, BlobList::default());
    }

    #[test]
    fn malformed_list_answers_are_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not well-formed"),
            (b"<EnumerationResults><Blobs><Blob>", "not well-formed"),
            (b"\xff\xfe<x/>", "not UTF-8"),
            (b"<html><body>proxy error</body></html>", "expected <EnumerationResults>"),
            (b"<EnumerationResults><Blobs><Blob><Snapshot/></Blob></Blobs></EnumerationResults>", "without <Name>"),
            (
                b"<EnumerationResults><Blobs><Blob><Name>x</Name><Properties><Content-Length>lots</Content-Length></Properties></Blob></Blobs></EnumerationResults>",
                "bad <Content-Length>",
            ),
            (b"<!DOCTYPE x [<!ENTITY a \"&a;\">]><EnumerationResults>&a;</EnumerationResults>", "not well-formed"),
        ];
        for (body, want) in cases {
            let e = parse_blob_list(body).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        // Arbitrary bytes never panic.
        let mut x = 7u32;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"<>/=\"a EnumerationResults Blob Name"[(x >> 16) as usize % 35]
                })
                .collect();
            let _ = parse_blob_list(&junk);
            let _ = parse_error(&junk);
        }
    }

    #[test]
    fn error_bodies_parse() {
        let body = b"\xef\xbb\xbf<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.\nRequestId:1\nTime:2024</Message></Error>";
        assert_eq!(
            parse_error(body).unwrap(),
            ("LeaseAlreadyPresent".into(), "There is already a lease present.".into())
        );
        assert_eq!(parse_error(b"not xml"), None);
        assert_eq!(parse_error(b"<Other/>"), None);
    }
}
