//! The rules that no single attribute can check, one small named check each.
//! Every check reports into the `Ctxt` and goes on, so that the user sees all
//! mistakes at once.

use quote::ToTokens;
use syn::{Member, Type};

use crate::ast::{Event, Publisher, Shape};
use crate::ctxt::Ctxt;

pub(crate) fn event(cx: &Ctxt, event: &Event<'_>) {
    not_a_union(cx, event);
    not_generic(cx, event);
    key_names_a_field(cx, event);
    attributes_on_the_type(cx, event);
}

pub(crate) fn publisher(cx: &Ctxt, publisher: &Publisher<'_>) {
    is_async(cx, publisher);
    is_safe(cx, publisher);
    fn_not_generic(cx, publisher);
    not_a_method(cx, publisher);
    takes_an_event(cx, publisher);
    at_most_two_arguments(cx, publisher);
    returns_a_result(cx, publisher);
}

fn not_a_union(cx: &Ctxt, event: &Event<'_>) {
    if let Shape::Union(union_token) = event.shape {
        cx.error_spanned_by(
            union_token,
            "`#[derive(OutboxEvent)]` works on structs and enums, not unions: serde cannot serialize a union; use a struct or an enum",
        );
    }
}

fn not_generic(cx: &Ctxt, event: &Event<'_>) {
    if !event.generics.params.is_empty() {
        cx.error_spanned_by(
            event.generics,
            "an outbox event cannot be generic: each stored event needs one stable type name; define a concrete type for each event",
        );
    }
}

fn key_names_a_field(cx: &Ctxt, event: &Event<'_>) {
    let Some(key) = &event.attrs.key else {
        return;
    };
    let fields = match event.shape {
        Shape::Struct(fields) => fields,
        Shape::Enum => {
            cx.error_spanned_by(
                key,
                "`key` is not supported on enums: variants have no field in common; use a struct, or implement `outbox::OutboxEvent` by hand",
            );
            return;
        }
        // Reported by `not_a_union`.
        Shape::Union(_) => return,
    };
    if event.key_field().is_some() {
        return;
    }
    let ident = event.ident;
    let shown = match key {
        Member::Named(name) => name.to_string(),
        Member::Unnamed(index) => index.index.to_string(),
    };
    let available: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.ident
                .as_ref()
                .map_or_else(|| i.to_string(), ToString::to_string)
        })
        .collect();
    let hint = if available.is_empty() {
        format!("`{ident}` has no fields; remove `key`")
    } else {
        format!("its fields are: {}", available.join(", "))
    };
    cx.error_spanned_by(
        key,
        format_args!("`key = {shown}`: `{ident}` has no field `{shown}`; {hint}"),
    );
}

fn attributes_on_the_type(cx: &Ctxt, event: &Event<'_>) {
    for attr in &event.misplaced {
        cx.error_spanned_by(
            attr,
            "`#[outbox(...)]` goes on the type, not on a field or variant: e.g. `#[outbox(key = order_id)]` above the struct",
        );
    }
}

fn is_async(cx: &Ctxt, publisher: &Publisher<'_>) {
    let sig = &publisher.func.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format_args!(
                "#[publisher] needs an `async fn`: write `async fn {}(...)`",
                sig.ident
            ),
        );
    }
}

fn is_safe(cx: &Ctxt, publisher: &Publisher<'_>) {
    if let Some(unsafety) = &publisher.func.sig.unsafety {
        cx.error_spanned_by(
            unsafety,
            "a #[publisher] fn cannot be `unsafe`: the Runner calls it with no way to uphold its contract; remove `unsafe` and wrap the unsafe part in a safe fn",
        );
    }
}

fn fn_not_generic(cx: &Ctxt, publisher: &Publisher<'_>) {
    const MESSAGE: &str = "a #[publisher] fn cannot be generic: it is registered for one concrete event type; write one publisher per event type";
    let generics = &publisher.func.sig.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        // `<...>` and the `where` clause both, when given.
        let mut all = generics.to_token_stream();
        generics.where_clause.to_tokens(&mut all);
        cx.error_spanned_by(all, MESSAGE);
    }
    for arg in &publisher.args {
        if let Type::ImplTrait(ty) = &*arg.ty {
            cx.error_spanned_by(ty, MESSAGE);
        }
    }
}

fn not_a_method(cx: &Ctxt, publisher: &Publisher<'_>) {
    if let Some(receiver) = publisher.func.sig.receiver() {
        cx.error_spanned_by(
            receiver,
            "#[publisher] goes on a free function, not a method: move it out of the `impl` block and pass shared values as `State<T>`",
        );
    }
}

fn takes_an_event(cx: &Ctxt, publisher: &Publisher<'_>) {
    let sig = &publisher.func.sig;
    if sig.inputs.is_empty() {
        cx.syn_error(syn::Error::new(
            sig.paren_token.span.join(),
            format_args!(
                "a publisher takes the event as its first argument: `async fn {}(event: OrderPlaced)`",
                sig.ident
            ),
        ));
    }
}

fn at_most_two_arguments(cx: &Ctxt, publisher: &Publisher<'_>) {
    for extra in publisher.args.iter().skip(2) {
        cx.error_spanned_by(
            extra,
            "a publisher takes at most two arguments: the event, then `State<T>` or `outbox::Context`",
        );
    }
}

fn returns_a_result(cx: &Ctxt, publisher: &Publisher<'_>) {
    let sig = &publisher.func.sig;
    if publisher.output().is_none() {
        cx.syn_error(syn::Error::new(
            sig.paren_token.span.close(),
            format_args!(
                "a publisher must return `Result<(), E>` so that failures are retried: write `async fn {}(...) -> anyhow::Result<()>`",
                sig.ident
            ),
        ));
    }
}
