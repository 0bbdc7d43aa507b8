//! The models that the macros check and expand: what the user wrote, with
//! the attributes parsed.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{
    Attribute, Data, DeriveInput, Field, Fields, FnArg, Generics, Ident, Item, ItemFn, Member,
    PatType, ReturnType, Token, Type,
};

use crate::attr::{EventAttrs, PublisherAttrs};
use crate::ctxt::Ctxt;

/// The input of `#[derive(OutboxEvent)]`.
pub(crate) struct Event<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: EventAttrs,
    pub(crate) shape: Shape<'a>,
    /// `#[outbox(...)]` on a field or a variant, where nothing reads it.
    pub(crate) misplaced: Vec<&'a Attribute>,
}

pub(crate) enum Shape<'a> {
    Struct(&'a Fields),
    Enum,
    Union(&'a Token![union]),
}

impl<'a> Event<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let outbox = |attrs: &'a [Attribute]| attrs.iter().filter(|a| a.path().is_ident("outbox"));
        let (shape, misplaced) = match &input.data {
            Data::Struct(data) => (
                Shape::Struct(&data.fields),
                data.fields.iter().flat_map(|f| outbox(&f.attrs)).collect(),
            ),
            Data::Enum(data) => (
                Shape::Enum,
                data.variants
                    .iter()
                    .flat_map(|v| {
                        outbox(&v.attrs).chain(v.fields.iter().flat_map(|f| outbox(&f.attrs)))
                    })
                    .collect(),
            ),
            Data::Union(data) => (
                Shape::Union(&data.union_token),
                data.fields
                    .named
                    .iter()
                    .flat_map(|f| outbox(&f.attrs))
                    .collect(),
            ),
        };
        Self {
            ident: &input.ident,
            generics: &input.generics,
            attrs: EventAttrs::from_attrs(cx, &input.attrs),
            shape,
            misplaced,
        }
    }

    /// The field that `key = ...` names, if it names one of a struct.
    pub(crate) fn key_field(&self) -> Option<(&Member, &'a Field)> {
        let key = self.attrs.key.as_ref()?;
        let Shape::Struct(fields) = self.shape else {
            return None;
        };
        let field = match (fields, key) {
            (Fields::Named(named), Member::Named(wanted)) => named
                .named
                .iter()
                .find(|f| f.ident.as_ref() == Some(wanted)),
            (Fields::Unnamed(unnamed), Member::Unnamed(index)) => {
                unnamed.unnamed.iter().nth(index.index as usize)
            }
            _ => None,
        }?;
        Some((key, field))
    }

    /// The stored type name: `name = ...`, else the type's name.
    pub(crate) fn name(&self) -> String {
        self.attrs
            .name
            .clone()
            .unwrap_or_else(|| self.ident.to_string())
    }

    /// `topic = ...`, else the name.
    pub(crate) fn topic(&self) -> String {
        self.attrs.topic.clone().unwrap_or_else(|| self.name())
    }

    pub(crate) fn version(&self) -> u32 {
        self.attrs.version.unwrap_or(1)
    }

    /// The path of the outbox crate in generated code; `::outbox` is spanned
    /// at `span`, so that an error in a call through it points there.
    pub(crate) fn krate(&self, span: Span) -> TokenStream {
        crate_path(self.attrs.krate.as_ref(), span)
    }
}

/// An `async fn` under `#[publisher]`.
pub(crate) struct Publisher<'a> {
    pub(crate) func: &'a ItemFn,
    pub(crate) attrs: PublisherAttrs,
    /// The typed arguments in order; a `self` receiver is none of them.
    pub(crate) args: Vec<&'a PatType>,
}

impl<'a> Publisher<'a> {
    pub(crate) fn from_ast(attrs: PublisherAttrs, func: &'a ItemFn) -> Self {
        let args = func
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Typed(typed) => Some(typed),
                FnArg::Receiver(_) => None,
            })
            .collect();
        Self { func, attrs, args }
    }

    pub(crate) fn ident(&self) -> &'a Ident {
        &self.func.sig.ident
    }

    /// The event type: the first argument's.
    pub(crate) fn event_type(&self) -> Option<&'a Type> {
        self.args.first().map(|arg| &*arg.ty)
    }

    /// The optional second argument's type: `State<T>` or `Context`.
    pub(crate) fn context_type(&self) -> Option<&'a Type> {
        self.args.get(1).map(|arg| &*arg.ty)
    }

    pub(crate) fn output(&self) -> Option<&'a Type> {
        match &self.func.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(ty),
        }
    }

    /// `name = ...`, else the function's name.
    pub(crate) fn name(&self) -> String {
        self.attrs
            .name
            .clone()
            .unwrap_or_else(|| self.ident().to_string())
    }

    /// As [`Event::krate`].
    pub(crate) fn krate(&self, span: Span) -> TokenStream {
        crate_path(self.attrs.krate.as_ref(), span)
    }
}

/// `crate = path` as the user wrote it (resolved where they wrote it), else
/// `::outbox`.
fn crate_path(krate: Option<&syn::Path>, span: Span) -> TokenStream {
    match krate {
        Some(path) => path.to_token_stream(),
        None => quote_spanned!(span=> ::outbox),
    }
}

/// Parse the item under `#[publisher]`. If it is no function, the error
/// points at the item (`struct Foo`, or all of it), not at the attribute.
pub(crate) fn parse_fn(item: TokenStream) -> syn::Result<ItemFn> {
    syn::parse2::<ItemFn>(item.clone()).map_err(|_| {
        let head = match syn::parse2::<Item>(item.clone()) {
            Ok(Item::Struct(i)) => head(&i.struct_token, &i.ident),
            Ok(Item::Enum(i)) => head(&i.enum_token, &i.ident),
            Ok(Item::Union(i)) => head(&i.union_token, &i.ident),
            Ok(Item::Trait(i)) => head(&i.trait_token, &i.ident),
            Ok(Item::Mod(i)) => head(&i.mod_token, &i.ident),
            Ok(Item::Const(i)) => head(&i.const_token, &i.ident),
            Ok(Item::Static(i)) => head(&i.static_token, &i.ident),
            Ok(Item::Type(i)) => head(&i.type_token, &i.ident),
            Ok(Item::Impl(i)) => head(&i.impl_token, &i.self_ty),
            _ => item,
        };
        syn::Error::new_spanned(
            head,
            "#[publisher] goes on a free `async fn` with a body, e.g. `#[publisher] async fn notify(event: OrderPlaced) -> anyhow::Result<()> { ... }`",
        )
    })
}

fn head(keyword: &dyn ToTokens, name: &dyn ToTokens) -> TokenStream {
    quote!(#keyword #name)
}
