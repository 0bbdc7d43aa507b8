use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::attr::{Errors, Once, string};

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut name = Once::<String>::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let path = meta.path.clone();
            name.set(&mut errors, &path, string(&meta)?);
            Ok(())
        } else {
            let shown = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_else(|| "this".to_owned());
            Err(meta.error(format_args!(
                "unknown publisher attribute `{shown}`; the only one is `name`, e.g. #[publisher(name = \"audit\")]"
            )))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }

    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[publisher] goes on an `async fn`, e.g. `#[publisher] async fn notify(event: OrderPlaced) -> anyhow::Result<()>`",
            );
            return quote!(#item)
                .into_iter()
                .chain(e.to_compile_error())
                .collect();
        }
    };
    let generated = generate(&func, name.get().cloned(), &mut errors);
    let errors = errors.into_compile_errors();
    quote! {
        #func
        #errors
        #generated
    }
}

fn generate(func: &ItemFn, name: Option<String>, errors: &mut Errors) -> TokenStream {
    let sig = &func.sig;
    let ident = &sig.ident;

    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token.span,
            format_args!("#[publisher] needs an `async fn`: write `async fn {ident}(...)`"),
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.at(
            sig.generics.span(),
            "a #[publisher] fn cannot be generic: it is registered for one concrete event type; write one publisher per event type",
        );
    }
    if let Some(receiver) = sig.receiver() {
        errors.at(
            receiver.span(),
            "#[publisher] goes on a free function, not a method: move it out of the `impl` block and pass shared values as `State<T>`",
        );
    }
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if sig.inputs.is_empty() {
        errors.at(
            sig.paren_token.span.join(),
            format_args!(
                "a publisher takes the event as its first argument: `async fn {ident}(event: OrderPlaced)`"
            ),
        );
    }
    for extra in typed.iter().skip(2) {
        errors.at(
            extra.span(),
            "a publisher takes at most two arguments: the event, then `State<T>` or `outbox::Context`",
        );
    }
    let output = match &sig.output {
        ReturnType::Default => {
            errors.at(
                sig.paren_token.span.close(),
                format_args!(
                    "a publisher must return `Result<(), E>` so that failures are retried: write `async fn {ident}(...) -> anyhow::Result<()>`"
                ),
            );
            None
        }
        ReturnType::Type(_, ty) => Some(ty),
    };

    if !errors.is_empty() || sig.receiver().is_some() || typed.is_empty() {
        return TokenStream::new();
    }
    let Some(output) = output else {
        return TokenStream::new();
    };

    let event_ty: &Type = &typed[0].ty;
    let name = name.unwrap_or_else(|| ident.to_string());

    let (extra_arg, requires) = match typed.get(1) {
        Some(arg) => {
            let ty = &arg.ty;
            (
                quote_spanned! {ty.span()=>
                    , match <#ty as ::outbox::FromContext>::from_context(&__outbox_cx) {
                        ::core::result::Result::Ok(value) => value,
                        ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
                    }
                },
                quote_spanned! {ty.span()=> <#ty as ::outbox::FromContext>::requirement },
            )
        }
        None => (quote!(), quote!(::outbox::__private::no_requirement)),
    };
    let decode = quote_spanned! {event_ty.span()=>
        ::outbox::__private::decode::<#event_ty>(&__outbox_cx)
    };
    let event_name = quote_spanned! {event_ty.span()=>
        <#event_ty as ::outbox::OutboxEvent>::NAME
    };
    let check_output = quote_spanned! {output.span()=>
        fn __outbox_check_output(output: #output) -> ::core::result::Result<(), ::outbox::PublishError> {
            ::outbox::__private::into_outcome(output)
        }
    };
    let boxed = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(__outbox_future)
    };
    let rust_type = quote!(#event_ty).to_string().replace(' ', "");

    quote! {
        #[doc(hidden)]
        const _: () = {
            #check_output

            fn __outbox_call(
                __outbox_cx: ::outbox::Context,
            ) -> ::outbox::__private::BoxFuture<'static, ::core::result::Result<(), ::outbox::PublishError>> {
                let __outbox_future = async move {
                    let __outbox_event = match #decode {
                        ::core::result::Result::Ok(event) => event,
                        ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
                    };
                    __outbox_check_output(#ident(__outbox_event #extra_arg).await)
                };
                #boxed
            }

            ::outbox::__private::inventory::submit! {
                ::outbox::__private::PublisherRegistration {
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
