//! The `key = value` lists of `#[outbox(...)]` and `#[publisher(...)]`.
//!
//! A bad entry is reported and skipped, so that every bad entry of every
//! attribute is reported at once; only a syntax error stops the list it is in.

use proc_macro2::TokenTree;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Index, Lit, Member, Path, Token};

use crate::ctxt::Ctxt;

/// What the `#[outbox(...)]` attributes on an event type say.
pub(crate) struct EventAttrs {
    pub(crate) name: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) key: Option<Member>,
    pub(crate) version: Option<u32>,
    pub(crate) krate: Option<Path>,
}

/// What the arguments of `#[publisher(...)]` say.
pub(crate) struct PublisherAttrs {
    pub(crate) name: Option<String>,
    pub(crate) krate: Option<Path>,
}

const EVENT_KEYS: &[&str] = &["name", "topic", "key", "version", "crate"];
const PUBLISHER_KEYS: &[&str] = &["name", "crate"];

impl EventAttrs {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut name = Once::default();
        let mut topic = Once::default();
        let mut key = Once::default();
        let mut version = Once::default();
        let mut krate = Once::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("outbox")) {
            let parsed = attr.parse_nested_meta(|meta| {
                let path = &meta.path;
                let value = value(&meta)?;
                match key_name(path).as_str() {
                    "name" => name.set(cx, path, string(cx, path, value, "order.placed")),
                    "topic" => topic.set(cx, path, string(cx, path, value, "orders")),
                    "key" => key.set(cx, path, member(cx, path, value)),
                    "version" => version.set(cx, path, schema_version(cx, path, value)),
                    "crate" => krate.set(cx, path, crate_path(cx, path, value)),
                    _ => unknown(cx, path, "outbox", EVENT_KEYS),
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }
        Self {
            name: name.value,
            topic: topic.value,
            key: key.value,
            version: version.value,
            krate: krate.value,
        }
    }
}

impl PublisherAttrs {
    pub(crate) fn from_args(cx: &Ctxt, args: proc_macro2::TokenStream) -> Self {
        let mut name = Once::default();
        let mut krate = Once::default();
        let parser = syn::meta::parser(|meta| {
            let path = &meta.path;
            let value = value(&meta)?;
            match key_name(path).as_str() {
                "name" => name.set(cx, path, string(cx, path, value, "audit")),
                "crate" => krate.set(cx, path, crate_path(cx, path, value)),
                _ => unknown(cx, path, "publisher", PUBLISHER_KEYS),
            }
            Ok(())
        });
        if let Err(error) = syn::parse::Parser::parse2(parser, args) {
            cx.syn_error(error);
        }
        Self {
            name: name.value,
            krate: krate.value,
        }
    }
}

/// A key that may be given once: the one helper that rejects a duplicate,
/// for every key of every attribute (also across several attributes).
struct Once<T> {
    seen: bool,
    value: Option<T>,
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Self {
            seen: false,
            value: None,
        }
    }
}

impl<T> Once<T> {
    /// Record `key`; `value` is `None` when it was bad (already reported).
    fn set(&mut self, cx: &Ctxt, key: &Path, value: Option<T>) {
        if self.seen {
            cx.error_spanned_by(
                key,
                format_args!("duplicate `{}`: give it once", key_name(key)),
            );
        } else {
            self.seen = true;
            self.value = value;
        }
    }
}

/// The value of `key = value`; `None` for a bare `key` (a `key(...)` list is
/// skipped, and reported by the key's parser as a missing value).
fn value(meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse().map(Some);
    }
    if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(None)
}

/// `name` as written, `crate` included.
fn key_name(key: &Path) -> String {
    key.to_token_stream().to_string().replace(' ', "")
}

fn required(cx: &Ctxt, key: &Path, value: Option<Expr>, example: &str) -> Option<Expr> {
    if value.is_none() {
        cx.error_spanned_by(
            key,
            format_args!("`{}` needs a value: write `{example}`", key_name(key)),
        );
    }
    value
}

/// `name = "order.placed"`: a non-empty string of at most 200 bytes.
fn string(cx: &Ctxt, key: &Path, value: Option<Expr>, sample: &str) -> Option<String> {
    let shown = key_name(key);
    let example = format!("{shown} = \"{sample}\"");
    let value = required(cx, key, value, &example)?;
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = &value
    {
        let text = lit.value();
        if text.trim().is_empty() {
            cx.error_spanned_by(
                lit,
                format_args!("`{shown}` must not be empty: write e.g. `{example}`"),
            );
            return None;
        }
        if text.len() > 200 {
            cx.error_spanned_by(
                lit,
                format_args!("`{shown}` must be at most 200 bytes long"),
            );
            return None;
        }
        return Some(text);
    }
    if let Expr::Path(path) = &value
        && let Some(ident) = path.path.get_ident()
    {
        cx.error_spanned_by(
            &value,
            format_args!("write the {shown} in quotes: `{shown} = \"{ident}\"`"),
        );
        return None;
    }
    cx.error_spanned_by(&value, format_args!("expected a string, e.g. `{example}`"));
    None
}

/// `key = order_id`, or `key = 0` on a tuple struct.
fn member(cx: &Ctxt, key: &Path, value: Option<Expr>) -> Option<Member> {
    let value = required(cx, key, value, "key = order_id")?;
    match &value {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => {
            if let Some(ident) = path.path.get_ident() {
                return Some(Member::Named(ident.clone()));
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if int.suffix().is_empty() => {
            if let Ok(index) = int.base10_parse::<u32>() {
                return Some(Member::Unnamed(Index {
                    index,
                    span: int.span(),
                }));
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            cx.error_spanned_by(
                lit,
                format_args!(
                    "write the field name without quotes: `key = {}`",
                    lit.value()
                ),
            );
            return None;
        }
        _ => {}
    }
    cx.error_spanned_by(
        &value,
        "expected a field name, e.g. `key = order_id` (or `key = 0` on a tuple struct)",
    );
    None
}

/// `version = 2`: from 1 up.
fn schema_version(cx: &Ctxt, key: &Path, value: Option<Expr>) -> Option<u32> {
    let value = required(cx, key, value, "version = 2")?;
    let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = &value
    else {
        cx.error_spanned_by(&value, "expected a whole number, e.g. `version = 2`");
        return None;
    };
    match int.base10_parse::<u32>() {
        Ok(0) => cx.error_spanned_by(
            int,
            "`version` starts at 1: write `version = 1` for the first schema of the payload",
        ),
        Ok(version) => return Some(version),
        Err(_) => cx.error_spanned_by(int, "`version` must be a whole number from 1 to 4294967295"),
    }
    None
}

/// `crate = ::outbox`, `crate = crate::reexports::outbox`, ...
fn crate_path(cx: &Ctxt, key: &Path, value: Option<Expr>) -> Option<Path> {
    let value = required(cx, key, value, "crate = ::outbox")?;
    match value {
        Expr::Path(path)
            if path.qself.is_none()
                && path.attrs.is_empty()
                && path.path.segments.iter().all(|s| s.arguments.is_none()) =>
        {
            Some(path.path)
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            cx.error_spanned_by(
                &lit,
                format_args!("write the path without quotes: `crate = {}`", lit.value()),
            );
            None
        }
        other => {
            cx.error_spanned_by(
                other,
                "expected the path of the outbox crate, e.g. `crate = ::outbox` or `crate = crate::reexports::outbox`",
            );
            None
        }
    }
}

fn unknown(cx: &Ctxt, key: &Path, attribute: &str, keys: &[&str]) {
    let shown = key_name(key);
    let all = keys
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = match keys.iter().find(|k| edit_distance(&shown, k) <= 2) {
        Some(guess) => format!(
            "unknown {attribute} attribute `{shown}`: did you mean `{guess}`? The keys are {all}"
        ),
        None => format!("unknown {attribute} attribute `{shown}`; the keys are {all}"),
    };
    cx.error_spanned_by(key, message);
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("nmae", "name"), 2);
        assert_eq!(edit_distance("topics", "topic"), 1);
        assert_eq!(edit_distance("key", "key"), 0);
        assert_eq!(edit_distance("", "crate"), 5);
    }
}
