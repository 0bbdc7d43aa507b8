//! Text that goes into the database: error messages and names from outside
//! (a publisher's error, a broker's answer) made storable in every backend.

/// The longest error text stored in a dead letter or as an event's last
/// error, in bytes. Longer ones are cut, with a note that they were.
pub(crate) const MAX_ERROR_LEN: usize = 8 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// appended (within the limit) when anything was cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    out.push(ellipsis);
    out
}

/// An error text every backend stores: NUL characters (which PostgreSQL
/// refuses in `text`) shown as `\0`, and at most [`MAX_ERROR_LEN`] bytes.
pub(crate) fn storable_error(text: &str) -> String {
    let text = if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\0"))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    cut(&text, MAX_ERROR_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcdef", 5), "ab…");
        let cut_mid = cut("ééééé", 6);
        assert!(cut_mid.len() <= 6 && cut_mid.ends_with('…'), "{cut_mid}");
    }

    #[test]
    fn errors_lose_nul_and_length() {
        assert_eq!(storable_error("bad\0byte"), "bad\\0byte");
        let long = "x".repeat(100_000);
        let stored = storable_error(&long);
        assert!(stored.len() <= MAX_ERROR_LEN);
        assert!(stored.ends_with('…'));
    }
}
