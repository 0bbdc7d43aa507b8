use crate::error::Error;

/// The longest accepted schema name or table prefix. Leaves room for the
/// suffixes the outbox appends (`_dead_letters`, `_key_idx`) within
/// PostgreSQL's 63-byte limit.
pub(crate) const MAX_IDENT_LEN: usize = 40;

/// Where the outbox lives: an optional schema and a table name prefix.
///
/// The default is the prefix `outbox` in the connection's default schema,
/// giving the tables `outbox_events` and `outbox_dead_letters`. Every name is
/// validated here and quoted in SQL, so nothing from configuration reaches a
/// statement unchecked.
///
/// ```
/// let tables = outbox::Tables::new("billing_outbox")?.schema("app")?;
/// assert_eq!(tables.prefix(), "billing_outbox");
///
/// let err = outbox::Tables::new("x\"; DROP TABLE orders; --").unwrap_err();
/// assert!(err.to_string().contains("invalid table prefix"));
/// # Ok::<(), outbox::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tables {
    schema: Option<String>,
    prefix: String,
    max_payload: Option<usize>,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            schema: None,
            prefix: "outbox".to_owned(),
            max_payload: None,
        }
    }
}

impl Tables {
    /// Tables named `{prefix}_events` and `{prefix}_dead_letters`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        validate("table prefix", &prefix)?;
        Ok(Self {
            prefix,
            ..Self::default()
        })
    }

    /// Refuse, at enqueue, payloads larger than this many bytes
    /// (`Error::InvalidEvent`, nothing written). By default any payload the
    /// database takes is enqueued; a limit keeps a Runner's memory per claim
    /// under `batch_size` times it, and an oversized event out of the
    /// brokers' way (MySQL/MariaDB take at most `max_allowed_packet`).
    ///
    /// ```
    /// let tables = outbox::Tables::default().max_payload(1 << 20);
    /// assert_eq!(tables.payload_limit(), Some(1 << 20));
    /// ```
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// The payload limit set with [`max_payload`](Self::max_payload).
    pub fn payload_limit(&self) -> Option<usize> {
        self.max_payload
    }

    /// Put the tables in this schema (PostgreSQL) or attached database
    /// (SQLite). `migrate` creates a missing PostgreSQL schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Result<Self, Error> {
        let schema = schema.into();
        validate("schema", &schema)?;
        self.schema = Some(schema);
        Ok(self)
    }

    /// The table name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The schema, when one was set.
    pub fn schema_name(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The tables for people: `app.outbox_*`, or `outbox_*` without a
    /// schema.
    pub(crate) fn display_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}_*", self.prefix),
            None => format!("{}_*", self.prefix),
        }
    }

    /// The quoted, schema-qualified name of a table with this suffix.
    #[cfg(any(feature = "postgres", feature = "sqlite", test))]
    pub(crate) fn qualified(&self, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}_{suffix}\"", self.prefix),
            None => format!("\"{}_{suffix}\"", self.prefix),
        }
    }

    /// The schema-qualified name of a table with this suffix, quoted with
    /// `quote` (`` ` `` for MySQL, whose default `sql_mode` has no `ANSI_QUOTES`).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn qualified_with(&self, quote: char, suffix: &str) -> String {
        let q = quote;
        match &self.schema {
            Some(schema) => format!("{q}{schema}{q}.{q}{}_{suffix}{q}", self.prefix),
            None => format!("{q}{}_{suffix}{q}", self.prefix),
        }
    }

    /// The quoted, unqualified name of a table with this suffix.
    #[cfg(feature = "sqlite")]
    pub(crate) fn unqualified(&self, suffix: &str) -> String {
        format!("\"{}_{suffix}\"", self.prefix)
    }

    /// A quoted name for an index, a sibling of the tables (unqualified).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn index_name(&self, suffix: &str) -> String {
        format!("\"{}_{suffix}\"", self.prefix)
    }

    /// The quoted schema name.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn quoted_schema(&self) -> Option<String> {
        self.schema.as_ref().map(|s| format!("\"{s}\""))
    }
}

fn validate(what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_IDENT_LEN {
        Some("it is too long")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("it contains a character that is not an ASCII letter, digit or '_'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidIdentifier {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["outbox", "_x", "a1_b2", &"a".repeat(MAX_IDENT_LEN)] {
            Tables::new(ok).unwrap().schema(ok).unwrap();
        }
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "1abc",
            "x\"; DROP TABLE orders; --",
            "a b",
            "a-b",
            "a.b",
            "é",
            "a`b",
            &"a".repeat(MAX_IDENT_LEN + 1),
        ] {
            let err = Tables::new(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidIdentifier {
                        what: "table prefix",
                        ..
                    }
                ),
                "{bad:?}"
            );
            let err = Tables::default().schema(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidIdentifier { what: "schema", .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quotes_names() {
        let t = Tables::new("ob").unwrap().schema("app").unwrap();
        assert_eq!(t.qualified("events"), "\"app\".\"ob_events\"");
        assert_eq!(Tables::default().qualified("events"), "\"outbox_events\"");
    }
}
