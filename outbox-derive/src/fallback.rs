//! What a macro emits next to its errors, so that the user sees the real
//! error and not a cascade of "trait not implemented" wherever the type or
//! function is used.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse_quote;

use crate::ast::Event;

/// The errors, and an `OutboxEvent` impl whose members are never called (the
/// crate does not compile). It is bounded by the trait's supertraits behind a
/// `for<'__outbox>`, a bound that is not "trivial" and so is allowed even if
/// it does not hold (rust-lang/rust#48214): a type that also lacks
/// `Serialize` gets no second error from here.
pub(crate) fn event(event: &Event<'_>, errors: &syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    let krate = event.krate(Span::call_site());
    let ident = event.ident;
    let name = event.name();
    let topic = event.topic();
    let version = event.version();
    let (impl_generics, ty_generics, where_clause) = event.generics.split_for_impl();
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| parse_quote!(where));
    where_clause.predicates.push(parse_quote! {
        for<'__outbox> #ident #ty_generics: #krate::__private::EventBounds
    });

    quote! {
        #errors

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::OutboxEvent for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;
                const TOPIC: &'static str = #topic;
                const VERSION: u32 = #version;

                fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                    ::core::unreachable!()
                }
            }
        };
    }
}

/// The item as written, and the errors: the function stays callable, it is
/// only not registered.
pub(crate) fn publisher(item: TokenStream, errors: &syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    quote! {
        #item
        #errors
    }
}
