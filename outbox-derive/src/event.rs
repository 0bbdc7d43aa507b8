use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Member};

use crate::attr::{Errors, Once, string};

#[derive(Default)]
struct Attrs {
    name: Once<String>,
    topic: Once<String>,
    key: Once<(Member, Span)>,
    version: Once<u32>,
}

fn parse_attrs(input: &DeriveInput, errors: &mut Errors) -> Attrs {
    let mut attrs = Attrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("outbox")) {
        let parsed = attr.parse_nested_meta(|meta| {
            let path = meta.path.clone();
            if path.is_ident("name") {
                attrs.name.set(errors, &path, string(&meta)?);
            } else if path.is_ident("topic") {
                attrs.topic.set(errors, &path, string(&meta)?);
            } else if path.is_ident("key") {
                let member: Member = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "expected a field name, e.g. `key = order_id` (or `key = 0` on a tuple struct)",
                    )
                })?;
                let span = member.span();
                attrs.key.set(errors, &path, (member, span));
            } else if path.is_ident("version") {
                let lit: syn::LitInt = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(e.span(), "expected a whole number, e.g. `version = 2`")
                })?;
                match lit.base10_parse::<u32>() {
                    Ok(v) if v >= 1 => attrs.version.set(errors, &path, v),
                    _ => errors.at(lit.span(), "`version` must be a whole number from 1 to 4294967295"),
                }
            } else {
                let shown = path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "this".to_owned());
                return Err(meta.error(format_args!(
                    "unknown outbox attribute `{shown}`; expected one of `name`, `topic`, `key`, `version`"
                )));
            }
            Ok(())
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    attrs
}

pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let attrs = parse_attrs(&input, &mut errors);
    let ident = &input.ident;

    if let Data::Union(u) = &input.data {
        errors.at(
            u.union_token.span,
            "`#[derive(OutboxEvent)]` works on structs and enums, not unions: serde cannot serialize a union",
        );
    }
    if !input.generics.params.is_empty() {
        errors.at(
            input.generics.span(),
            "an outbox event cannot be generic: each stored event needs one stable type name; define a concrete type for each event",
        );
    }

    let key_expr = match attrs.key.get() {
        None => quote!(::core::option::Option::None),
        Some((member, span)) => match check_key(&input, member, *span, &mut errors) {
            Some(field_ty) => quote_spanned! {field_ty.span()=>
                ::outbox::__private::partition_key::<#field_ty>(&self.#member)
            },
            None => quote!(::core::option::Option::None),
        },
    };

    let name = attrs
        .name
        .get()
        .cloned()
        .unwrap_or_else(|| ident.to_string());
    let topic = attrs.topic.get().cloned().unwrap_or_else(|| name.clone());
    let version = attrs.version.get().copied().unwrap_or(1);
    let rust_type = ident.to_string();

    if !input.generics.params.is_empty() || matches!(input.data, Data::Union(_)) {
        // Nothing sensible to implement; the errors say why.
        return errors.into_compile_errors();
    }

    let body = quote! {
        #[automatically_derived]
        impl ::outbox::OutboxEvent for #ident {
            const NAME: &'static str = #name;
            const TOPIC: &'static str = #topic;
            const VERSION: u32 = #version;

            fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                #key_expr
            }
        }

        ::outbox::__private::inventory::submit! {
            ::outbox::__private::EventTypeInfo {
                name: #name,
                topic: #topic,
                version: #version,
                rust_type: #rust_type,
            }
        }
    };
    let errors = errors.into_compile_errors();
    quote! {
        #errors
        #[doc(hidden)]
        const _: () = {
            #body
        };
    }
}

/// Check that `key` names a field; returns the field's type.
fn check_key<'a>(
    input: &'a DeriveInput,
    member: &Member,
    span: Span,
    errors: &mut Errors,
) -> Option<&'a syn::Type> {
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(_) => {
            errors.at(
                span,
                "`key` is not supported on enums: variants have no field in common; use a struct, or implement `outbox::OutboxEvent` by hand",
            );
            return None;
        }
        Data::Union(_) => return None,
    };
    let found = match (fields, member) {
        (Fields::Named(named), Member::Named(wanted)) => named
            .named
            .iter()
            .find(|f| f.ident.as_ref() == Some(wanted)),
        (Fields::Unnamed(unnamed), Member::Unnamed(index)) => {
            unnamed.unnamed.iter().nth(index.index as usize)
        }
        _ => None,
    };
    match found {
        Some(field) => Some(&field.ty),
        None => {
            let ident = &input.ident;
            let available: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    f.ident
                        .as_ref()
                        .map_or_else(|| i.to_string(), ToString::to_string)
                })
                .collect();
            let shown = match member {
                Member::Named(n) => n.to_string(),
                Member::Unnamed(i) => i.index.to_string(),
            };
            let hint = if available.is_empty() {
                format!("`{ident}` has no fields")
            } else {
                format!("its fields are: {}", available.join(", "))
            };
            errors.at(
                span,
                format_args!("`key = {shown}`: `{ident}` has no field `{shown}`; {hint}"),
            );
            None
        }
    }
}
