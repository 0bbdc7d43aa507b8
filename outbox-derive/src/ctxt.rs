use std::cell::RefCell;
use std::fmt::Display;
use std::thread;

use quote::ToTokens;

/// The errors of one macro call.
///
/// Parsing and checking report into it and go on, so that the user sees
/// every mistake at once; [`Ctxt::check`] then tells whether code may be
/// generated. Like serde_derive's, it panics when dropped unchecked, so that
/// no error can be lost.
pub(crate) struct Ctxt {
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Report `message` at the tokens of `at` (their first to last token).
    pub(crate) fn error_spanned_by(&self, at: impl ToTokens, message: impl Display) {
        self.syn_error(syn::Error::new_spanned(at.into_token_stream(), message));
    }

    /// Report an error from syn (a parse error carries its own span).
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("Ctxt used after check()")
            .push(error);
    }

    /// All reported errors as one, or `Ok` when there is none.
    pub(crate) fn check(self) -> Result<(), syn::Error> {
        let errors = self.errors.borrow_mut().take().unwrap_or_default();
        let mut errors = errors.into_iter();
        let Some(mut all) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            all.combine(error);
        }
        Err(all)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && self.errors.borrow().is_some() {
            panic!("outbox-derive: a Ctxt was dropped without check()");
        }
    }
}
