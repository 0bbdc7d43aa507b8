use proc_macro2::Span;
use syn::spanned::Spanned;

/// Collects every error, so the user sees all bad attributes at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn into_compile_errors(self) -> proc_macro2::TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// One `key = value` setting that may be given once.
pub(crate) struct Once<T> {
    value: Option<(T, Span)>,
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Self { value: None }
    }
}

impl<T> Once<T> {
    pub(crate) fn set(&mut self, errors: &mut Errors, key: &syn::Path, value: T) {
        let name = key.get_ident().map(ToString::to_string).unwrap_or_default();
        if self.value.is_some() {
            errors.at(key.span(), format_args!("duplicate `{name}`: give it once"));
        } else {
            self.value = Some((value, key.span()));
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref().map(|(v, _)| v)
    }
}

/// Parse `name = "..."` as a non-empty string.
pub(crate) fn string(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<String> {
    let lit: syn::LitStr = meta.value()?.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected a string literal, e.g. `name = \"order.placed\"`",
        )
    })?;
    let value = lit.value();
    if value.trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "must not be empty"));
    }
    if value.len() > 200 {
        return Err(syn::Error::new(
            lit.span(),
            "must be at most 200 bytes long",
        ));
    }
    Ok(value)
}
