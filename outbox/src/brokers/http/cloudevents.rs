//! [CloudEvents 1.0](https://github.com/cloudevents/spec) over HTTP: the
//! request body and headers of an event, in structured or binary mode.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tracing::warn;

use crate::brokers::{JSON, header, metadata};
use crate::error::PublishError;
use crate::event::StorageBox;

/// `Content-Type` of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// `Content-Type` of a payload that is not JSON.
const OCTET_STREAM: &str = "application/octet-stream";

/// The [CloudEvents HTTP binding](https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/http-protocol-binding.md)
/// mode of a webhook request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The body is the whole CloudEvent as JSON (`application/cloudevents+json`),
    /// with the payload in `data`. Self-contained, and the signature covers
    /// every attribute.
    #[default]
    Structured,
    /// The body is the payload itself (`Content-Type: application/json`) and
    /// the attributes travel as `ce-*` headers.
    Binary,
}

/// The headers and body of the request that carries `event` as a
/// CloudEvent from `source`: the event's metadata as headers, then the
/// event in `mode`.
pub(super) fn encode(
    event: &StorageBox,
    mode: Mode,
    source: &str,
) -> Result<(HeaderMap, Vec<u8>), PublishError> {
    let json = serde_json::from_slice::<serde_json::Value>(&event.payload).ok();
    let mut headers = HeaderMap::new();
    for (name, value) in metadata(event) {
        if name.eq_ignore_ascii_case(header::CONTENT_TYPE) {
            continue;
        }
        insert(&mut headers, &name, &value, false, event);
    }
    let body = match mode {
        Mode::Structured => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(CLOUDEVENTS_JSON));
            structured(event, source, json).map_err(|e| {
                PublishError::permanent(format!("cannot encode the CloudEvent: {e}"))
            })?
        }
        Mode::Binary => {
            let content_type = if json.is_some() { JSON } else { OCTET_STREAM };
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            for (name, value) in attributes(event, source) {
                insert(&mut headers, &format!("ce-{name}"), &value, true, event);
            }
            event.payload.clone()
        }
    };
    Ok((headers, body))
}

/// The CloudEvents context attributes of an event, except `datacontenttype`
/// (which binary mode carries as `Content-Type`): (name, value).
fn attributes(event: &StorageBox, source: &str) -> Vec<(String, String)> {
    let mut out = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), event.id.to_string()),
        ("source".to_owned(), source.to_owned()),
        ("type".to_owned(), event.event_type.clone()),
        ("time".to_owned(), rfc3339(event.created_at)),
        ("schemaversion".to_owned(), event.version.to_string()),
    ];
    if let Some(key) = &event.partition_key {
        out.push(("subject".to_owned(), key.clone()));
        out.push(("partitionkey".to_owned(), key.clone()));
    }
    for (name, value) in &event.headers {
        let name = name.to_ascii_lowercase();
        if is_extension_name(&name) && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value.clone()));
        }
    }
    out
}

/// Stored headers that can be CloudEvents extension attributes: lower-case
/// letters and digits, at most 20, not a reserved name.
fn is_extension_name(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "data",
        "data_base64",
        "datacontenttype",
        "dataschema",
        "id",
        "source",
        "specversion",
        "subject",
        "time",
        "type",
    ];
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED.contains(&name)
}

/// The structured-mode body: the CloudEvent as JSON.
fn structured(
    event: &StorageBox,
    source: &str,
    json: Option<serde_json::Value>,
) -> Result<Vec<u8>, serde_json::Error> {
    use serde_json::Value;
    let mut object = serde_json::Map::new();
    for (name, value) in attributes(event, source) {
        let value = if name == "schemaversion" {
            Value::from(event.version)
        } else {
            Value::String(value)
        };
        object.insert(name, value);
    }
    match json {
        Some(data) => {
            object.insert("datacontenttype".to_owned(), JSON.into());
            object.insert("data".to_owned(), data);
        }
        None => {
            object.insert("datacontenttype".to_owned(), OCTET_STREAM.into());
            object.insert(
                "data_base64".to_owned(),
                BASE64.encode(&event.payload).into(),
            );
        }
    }
    serde_json::to_vec(&Value::Object(object))
}

/// Add a header; `ce` values are percent-encoded per the CloudEvents HTTP
/// binding, others only when they are not valid header values.
fn insert(headers: &mut HeaderMap, name: &str, value: &str, ce: bool, event: &StorageBox) {
    let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
        warn!(event_id = %event.id, header = name, "outbox: not a valid HTTP header name, not sent");
        return;
    };
    let value = if ce {
        percent_encode(value)
    } else {
        match HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(header_name, v);
                return;
            }
            Err(_) => percent_encode(value),
        }
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(header_name, v);
        }
        Err(_) => {
            warn!(event_id = %event.id, header = name, "outbox: header value cannot be sent, skipped")
        }
    }
}

/// Percent-encode space, `"`, `%` and everything outside printable ASCII
/// (UTF-8 bytes), as the CloudEvents HTTP binding asks for `ce-*` headers.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b <= b' ' || b >= 0x7f || b == b'"' || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// RFC 3339 in UTC, with milliseconds (microseconds when there are some).
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let nanos = since.subsec_nanos();
    let fraction = if nanos.is_multiple_of(1_000_000) {
        format!("{:03}", nanos / 1_000_000)
    } else {
        format!("{:06}", nanos / 1_000)
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{fraction}Z")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::brokers::stored;
    use crate::event::NewEvent;

    #[test]
    fn rfc3339_formats_utc_with_fraction() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(at(951_782_400, 5_000_000)),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(
            rfc3339(at(1_709_251_199, 123_456_000)),
            "2024-02-29T23:59:59.123456Z"
        );
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn percent_encoding_follows_the_http_binding() {
        assert_eq!(percent_encode("order.placed"), "order.placed");
        assert_eq!(percent_encode("a b\"%é"), "a%20b%22%25%C3%A9");
    }

    #[test]
    fn a_payload_that_is_not_json_travels_as_base64() {
        let event = stored(NewEvent::new("t", b"\xff\x00".to_vec()));
        let (headers, body) = encode(&event, Mode::Structured, "/s").unwrap();
        assert_eq!(headers[CONTENT_TYPE], CLOUDEVENTS_JSON);
        let ce: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(ce["datacontenttype"], OCTET_STREAM);
        assert_eq!(ce["data_base64"], "/wA=");
        assert!(ce.get("data").is_none());

        let (headers, body) = encode(&event, Mode::Binary, "/s").unwrap();
        assert_eq!(headers[CONTENT_TYPE], OCTET_STREAM);
        assert_eq!(headers["ce-source"], "/s");
        assert_eq!(body, event.payload);
    }

    #[test]
    fn only_fitting_stored_headers_become_extension_attributes() {
        assert!(is_extension_name("traceparent"));
        assert!(!is_extension_name("Trace-Parent"));
        assert!(!is_extension_name("id"));
        assert!(!is_extension_name("averyveryverylongname1"));
    }
}
