//! Code generation from a checked model.
//!
//! Generated code names only absolute paths (`#krate::...`, `::core::...`,
//! `::std::...`) and sits in `const _: () = { ... };`; its own items and
//! locals are named `__outbox_...`. So whatever the user's module defines
//! (`type Result`, `struct Box`, `const value`, ...) changes nothing.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::{Event, Publisher};

pub(crate) fn event(event: &Event<'_>) -> TokenStream {
    let krate = event.krate(Span::call_site());
    let ident = event.ident;
    let name = event.name();
    let topic = event.topic();
    let version = event.version();
    let rust_type = ident.to_string();
    let key = match event.key_field() {
        Some((member, field)) => {
            let ty = &field.ty;
            let at_key = event.krate(ty.span());
            // Spanned at the field's type: "`Vec<String>` cannot be used as a partition key".
            quote_spanned! {ty.span()=>
                #at_key::__private::partition_key::<#ty>(&self.#member)
            }
        }
        None => quote!(::core::option::Option::None),
    };

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #krate::OutboxEvent for #ident {
                const NAME: &'static str = #name;
                const TOPIC: &'static str = #topic;
                const VERSION: u32 = #version;

                fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                    #key
                }
            }

            #krate::__private::inventory::submit! {
                #krate::__private::EventTypeInfo {
                    name: #name,
                    topic: #topic,
                    version: #version,
                    rust_type: #rust_type,
                }
            }
        };
    }
}

pub(crate) fn publisher(publisher: &Publisher<'_>) -> TokenStream {
    let func = publisher.func;
    // Present once the model is checked; without them there is nothing to register.
    let (Some(event_ty), Some(output)) = (publisher.event_type(), publisher.output()) else {
        return quote!(#func);
    };
    let krate = publisher.krate(Span::call_site());
    let ident = publisher.ident();
    let name = publisher.name();

    let (context_arg, requires) = match publisher.context_type() {
        Some(ty) => {
            let at_context = publisher.krate(ty.span());
            (
                quote_spanned! {ty.span()=>
                    , <#ty as #at_context::FromContext>::from_context(&__outbox_cx)?
                },
                quote_spanned! {ty.span()=> <#ty as #at_context::FromContext>::requirement },
            )
        }
        None => (quote!(), quote!(#krate::__private::no_requirement)),
    };
    // Each check spanned at the user's token it is about.
    let at_event = publisher.krate(event_ty.span());
    let decode = quote_spanned! {event_ty.span()=>
        #at_event::__private::decode::<#event_ty>(&__outbox_cx)
    };
    let event_name = quote_spanned! {event_ty.span()=>
        <#event_ty as #at_event::OutboxEvent>::NAME
    };
    let at_output = publisher.krate(output.span());
    let check_output = quote_spanned! {output.span()=>
        fn __outbox_check_output(
            __outbox_output: #output,
        ) -> ::core::result::Result<(), #at_output::PublishError> {
            #at_output::__private::into_outcome(__outbox_output)
        }
    };
    let boxed = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(__outbox_future)
    };
    let rust_type = quote!(#event_ty).to_string().replace(' ', "");

    quote! {
        #func

        #[doc(hidden)]
        const _: () = {
            #check_output

            fn __outbox_call(
                __outbox_cx: #krate::Context,
            ) -> #krate::__private::BoxFuture<'static, ::core::result::Result<(), #krate::PublishError>> {
                let __outbox_future = async move {
                    let __outbox_event = #decode?;
                    __outbox_check_output(#ident(__outbox_event #context_arg).await)
                };
                #boxed
            }

            #krate::__private::inventory::submit! {
                #krate::__private::PublisherRegistration {
                    name: #name,
                    event_type: #event_name,
                    rust_type: #rust_type,
                    module: ::core::module_path!(),
                    requires: #requires,
                    call: __outbox_call,
                }
            }
        };
    }
}
