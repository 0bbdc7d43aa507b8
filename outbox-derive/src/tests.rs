//! Unit tests of the expansions; the compiler's view is in `tests/ui`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::visit::Visit;

fn derive(input: TokenStream) -> String {
    crate::derive(&syn::parse2(input).unwrap()).to_string()
}

fn publisher(args: TokenStream, item: TokenStream) -> String {
    crate::publisher_attribute(args, item).to_string()
}

fn errors(output: &str) -> usize {
    output.matches("compile_error").count()
}

/// Every binding and fn the generated code declares inside its `const _`.
#[derive(Default)]
struct Declared(Vec<String>);

impl<'ast> Visit<'ast> for Declared {
    fn visit_pat_ident(&mut self, pat: &'ast syn::PatIdent) {
        self.0.push(pat.ident.to_string());
        syn::visit::visit_pat_ident(self, pat);
    }

    // Helper fns; the methods of the trait impl have the trait's names.
    fn visit_item_fn(&mut self, func: &'ast syn::ItemFn) {
        self.0.push(func.sig.ident.to_string());
        syn::visit::visit_item_fn(self, func);
    }
}

fn declared_in_const_blocks(output: &str) -> Vec<String> {
    let file: syn::File = syn::parse_str(output).unwrap();
    let mut declared = Declared::default();
    for item in &file.items {
        if let syn::Item::Const(block) = item {
            declared.visit_item_const(block);
        }
    }
    declared.0
}

#[test]
fn generated_bindings_are_prefixed() {
    let output = publisher(
        quote!(),
        quote! {
            async fn notify(event: OrderPlaced, cx: Context) -> anyhow::Result<()> { Ok(()) }
        },
    );
    let declared = declared_in_const_blocks(&output);
    assert!(declared.len() >= 4, "{declared:?}");
    for name in declared {
        assert!(name.starts_with("__outbox_"), "`{name}` in {output}");
    }
    let output = derive(quote! {
        #[outbox(key = id)] struct E { id: i64 }
    });
    for name in declared_in_const_blocks(&output) {
        assert!(name.starts_with("__outbox_"), "`{name}` in {output}");
    }
}

#[test]
fn crate_path_replaces_outbox_everywhere() {
    let event = derive(quote! {
        #[outbox(crate = reexport::ob, key = id)] struct E { id: i64 }
    });
    let func = publisher(
        quote!(crate = reexport::ob, name = "n"),
        quote!(
            async fn f(e: E, s: State<S>) -> anyhow::Result<()> {
                Ok(())
            }
        ),
    );
    for output in [event, func] {
        assert!(!output.contains(":: outbox"), "{output}");
        assert!(output.contains("reexport :: ob :: __private"), "{output}");
    }
}

#[test]
fn every_bad_attribute_is_reported_at_once() {
    let output = derive(quote! {
        #[outbox(nmae = "x", version = 0, key = missing)]
        #[outbox(topic = "", crate = "outbox", name = x)]
        struct E<T> { #[outbox(key)] id: T }
    });
    // nmae, version, key, topic, crate, name, generic, field attribute.
    assert_eq!(errors(&output), 8, "{output}");

    let output = publisher(
        quote!(nmae = "x", name = "a", name = "b"),
        quote!(
            unsafe fn f<T>(&self, a: T, b: u8, c: u8) {}
        ),
    );
    // nmae, duplicate name, async, unsafe, generic, self, third argument, return type.
    assert_eq!(errors(&output), 8, "{output}");
}

#[test]
fn a_bad_value_does_not_hide_the_next_key() {
    let output = derive(quote! {
        #[outbox(version = "2", name = "", key = 1.5, topic = orders)]
        struct E(i64);
    });
    assert_eq!(errors(&output), 4, "{output}");
    assert!(output.contains("write the topic in quotes"), "{output}");
}

#[test]
fn duplicates_are_reported_across_attributes() {
    let output = derive(quote! {
        #[outbox(name = "a")] #[outbox(name = "b")] #[outbox(crate = ::outbox, crate = ::outbox)]
        struct E;
    });
    assert_eq!(output.matches("duplicate").count(), 2, "{output}");
}

#[test]
fn on_an_error_the_derive_still_implements_the_trait() {
    let output = derive(quote! {
        #[outbox(version = 0)] struct E;
    });
    assert_eq!(errors(&output), 1);
    assert!(
        output.contains("impl :: outbox :: OutboxEvent for E"),
        "{output}"
    );
    assert!(output.contains("EventBounds"), "{output}");
    assert!(
        !output.contains("inventory"),
        "registered despite the error: {output}"
    );
}

#[test]
fn on_an_error_the_function_stays_as_written() {
    let item = quote!(
        async fn notify(event: E) {}
    );
    let output = publisher(quote!(), item.clone());
    assert!(output.starts_with(&item.to_string()), "{output}");
    assert_eq!(errors(&output), 1);
    assert!(!output.contains("inventory"), "{output}");
}

#[test]
fn a_non_function_is_kept_and_refused() {
    let output = publisher(
        quote!(),
        quote!(
            struct NotAFn;
        ),
    );
    assert!(output.starts_with("struct NotAFn ;"), "{output}");
    assert!(output.contains("goes on a free `async fn`"), "{output}");
}

#[test]
fn unknown_keys_get_a_suggestion() {
    let output = derive(quote! {
        #[outbox(topc = "t", colour = 1)] struct E;
    });
    assert!(output.contains("did you mean `topic`"), "{output}");
    assert_eq!(output.matches("did you mean").count(), 1, "{output}");
}
