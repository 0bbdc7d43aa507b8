//! [Standard Webhooks](https://www.standardwebhooks.com/) signatures:
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use super::ConfigError;
use crate::event::StorageBox;

/// A signing key, shared by clones of a publisher.
#[derive(Clone)]
pub(super) struct Secret(Arc<[u8]>);

impl Secret {
    /// `whsec_` followed by the base64 of the key, as receivers hand it out
    /// (a bare base64 key is accepted too).
    pub(super) fn parse(secret: &str) -> Result<Self, ConfigError> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64
            .decode(encoded.trim())
            .map_err(|e| ConfigError::Secret(format!("the key is not base64 ({e})")))?;
        if key.is_empty() {
            return Err(ConfigError::Secret("the key is empty".to_owned()));
        }
        Ok(Self(key.into()))
    }

    /// Add the Standard Webhooks headers for this event and body, signed
    /// now.
    pub(super) fn sign(&self, headers: &mut HeaderMap, event: &StorageBox, body: &[u8]) {
        let id = event.id.to_string();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = signature(&self.0, &id, timestamp, body);
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            // An id, digits and base64: always valid header values.
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`.
fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::stored;
    use crate::event::NewEvent;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_base64_after_the_prefix() {
        assert!(Secret::parse("whsec_%%%").is_err());
        assert!(Secret::parse("whsec_").is_err());
        assert_eq!(&*Secret::parse("whsec_c2VjcmV0").unwrap().0, b"secret");
        assert_eq!(&*Secret::parse("c2VjcmV0").unwrap().0, b"secret");
    }

    #[test]
    fn signed_headers_carry_id_timestamp_and_signature() {
        let event = stored(NewEvent::new("t", b"{}".to_vec()));
        let secret = Secret::parse("whsec_c2VjcmV0").unwrap();
        let mut headers = HeaderMap::new();
        secret.sign(&mut headers, &event, b"body");
        let get = |name: &str| headers[name].to_str().unwrap().to_owned();
        assert_eq!(get("webhook-id"), event.id.to_string());
        let timestamp: u64 = get("webhook-timestamp").parse().unwrap();
        assert_eq!(
            get("webhook-signature"),
            signature(b"secret", &event.id.to_string(), timestamp, b"body")
        );
    }
}
