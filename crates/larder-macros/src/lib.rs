//! `#[larder::cached]`: memoize an async function by its arguments through
//! a larder `Cache`, with `get_or_compute`'s guarantees. Use it through the
//! facade (`larder`, feature `macros`); the expansion names `::larder`.
//!
//! See [`macro@cached`].

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{
    parse_macro_input, Error, Expr, FnArg, GenericArgument, ItemFn, LitStr, Pat, PathArguments,
    ReturnType, Token, Type,
};

/// One `name = value` of the attribute.
struct Setting {
    name: syn::Ident,
    value: Expr,
}

impl Parse for Setting {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name: syn::Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(Setting { name, value })
    }
}

#[derive(Default)]
struct Settings {
    cache: Option<Expr>,
    key: Option<LitStr>,
    ttl: Option<Expr>,
    stale_while_revalidate: Option<Expr>,
    stale_if_error: Option<Expr>,
    lease: Option<Expr>,
}

fn parse_settings(list: Punctuated<Setting, Token![,]>) -> syn::Result<Settings> {
    let mut s = Settings::default();
    for Setting { name, value } in list {
        let slot = match name.to_string().as_str() {
            "cache" => &mut s.cache,
            "ttl" => &mut s.ttl,
            "stale_while_revalidate" => &mut s.stale_while_revalidate,
            "stale_if_error" => &mut s.stale_if_error,
            "lease" => &mut s.lease,
            "key" => {
                let Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }) = value
                else {
                    return Err(Error::new_spanned(
                        value,
                        "key must be a string literal, a format template over the arguments: key = \"user:{id}\"",
                    ));
                };
                if s.key.replace(lit).is_some() {
                    return Err(Error::new_spanned(name, "key is given twice"));
                }
                continue;
            }
            other => {
                return Err(Error::new_spanned(
                    &name,
                    format!(
                        "unknown setting {other:?}; expected cache, key, ttl, stale_while_revalidate, stale_if_error or lease"
                    ),
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(Error::new_spanned(name, "setting given twice"));
        }
    }
    Ok(s)
}

/// Seconds (an integer literal) or a `Duration` expression.
fn duration(e: &Expr) -> proc_macro2::TokenStream {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(n),
            ..
        }) => quote!(::std::time::Duration::from_secs(#n)),
        other => quote!(#other),
    }
}

/// The `T` and `E` of `Result<T, E>`.
fn result_types(ret: &ReturnType) -> Option<(Type, Type)> {
    let ReturnType::Type(_, ty) = ret else {
        return None;
    };
    let Type::Path(p) = &**ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    Some((types.next()?, types.next()?))
}

/// Memoizes an `async fn` returning `Result<T, E>` through a larder
/// `Cache`: calls with the same key share one cached value, computed by
/// `get_or_compute` (one run per key across concurrent callers in the
/// process, one across processes on backends with leases, fail-open, no
/// stale sets).
///
/// ```ignore
/// #[larder::cached(cache = app_cache(), key = "user:{id}", ttl = 300)]
/// async fn load_user(pool: &PgPool, id: i64) -> Result<User, sqlx::Error> {
///     sqlx::query_as("SELECT id, name FROM users WHERE id = $1").bind(id).fetch_one(pool).await
/// }
/// // load_user(&pool, 7).await: Result<User, larder::ComputeError<sqlx::Error>>
/// ```
///
/// Settings:
///
/// - `cache = EXPR` (required): an expression giving a `Cache` or a
///   `&Cache` (a `static` behind `LazyLock`, a function, a field of a
///   global state);
/// - `key = "template"`: a `format!` template over the argument names
///   (default: the function's path and every argument's `Debug`, spaces
///   and control characters percent-encoded); arguments not named in it do
///   not vary the key (a pool, a client, a counter), so name a key
///   whenever an argument is not part of the value's identity;
/// - `ttl = SECONDS | DURATION_EXPR` (default 300 s);
/// - `stale_while_revalidate = …`, `stale_if_error = …`, `lease = …`
///   (seconds or a `Duration`): as `ComputeOptions`. With a stale window
///   the refresh runs in the background, so the arguments must be owned
///   (`'static`) and the future `Send`.
///
/// The error type becomes `larder::ComputeError<E>`: the function's own
/// error comes back as `ComputeError::Loader(Arc<E>)`, the same one for
/// every caller that waited for the failed run; nothing is cached then.
/// `T` needs `Serialize + DeserializeOwned`.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let settings = parse_macro_input!(attr with Punctuated::<Setting, Token![,]>::parse_terminated);
    let func = parse_macro_input!(item as ItemFn);
    match expand(settings, func) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    settings: Punctuated<Setting, Token![,]>,
    func: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let s = parse_settings(settings)?;
    let cache = s.cache.ok_or_else(|| {
        Error::new(
            Span::call_site(),
            "#[cached] needs `cache = EXPR` (a Cache or &Cache)",
        )
    })?;
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new_spanned(
            sig.fn_token,
            "#[cached] memoizes an async fn",
        ));
    }
    let Some((ok, err)) = result_types(&sig.output) else {
        return Err(Error::new_spanned(
            &sig.output,
            "#[cached] needs the return type Result<T, E> (written as Result<…>)",
        ));
    };
    let mut names = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                return Err(Error::new_spanned(
                    r,
                    "#[cached] does not take methods: call a free function from the method",
                ))
            }
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(i) => names.push(i.ident.clone()),
                other => {
                    return Err(Error::new_spanned(
                        other,
                        "#[cached] needs plain argument names (no patterns)",
                    ))
                }
            },
        }
    }
    let fn_name = &sig.ident;
    let key = match &s.key {
        Some(template) => quote!(::std::format!(#template)),
        None => {
            let path = quote!(::std::concat!(
                ::std::module_path!(),
                "::",
                ::std::stringify!(#fn_name)
            ));
            quote!(::larder::__cached_key(#path, &::std::format!("{:?}", (#(&#names,)*))))
        }
    };
    let ttl = s
        .ttl
        .as_ref()
        .map(duration)
        .unwrap_or_else(|| quote!(::std::time::Duration::from_secs(300)));
    let block = &func.block;
    let vis = &func.vis;
    let attrs = &func.attrs;
    let mut new_sig = sig.clone();
    new_sig.output = syn::parse_quote!(-> ::std::result::Result<#ok, ::larder::ComputeError<#err>>);
    let background = s.stale_while_revalidate.is_some() || s.stale_if_error.is_some();
    let call = if background || s.lease.is_some() {
        let mut opts = quote!(::larder::ComputeOptions::new(#ttl));
        if let Some(d) = &s.stale_while_revalidate {
            let d = duration(d);
            opts = quote!(#opts.stale_while_revalidate(#d));
        }
        if let Some(d) = &s.stale_if_error {
            let d = duration(d);
            opts = quote!(#opts.stale_if_error(#d));
        }
        if let Some(d) = &s.lease {
            let d = duration(d);
            opts = quote!(#opts.lease_ttl(#d));
        }
        quote! {
            let __larder_opts = #opts;
            __larder_cache
                .get_or_compute_with(&__larder_key, &__larder_opts, move || async move {
                    let __larder_result: ::std::result::Result<#ok, #err> = async move #block.await;
                    __larder_result
                })
                .await
        }
    } else {
        quote! {
            __larder_cache
                .get_or_compute(&__larder_key, #ttl, move || async move {
                    let __larder_result: ::std::result::Result<#ok, #err> = async move #block.await;
                    __larder_result
                })
                .await
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #new_sig {
            let __larder_key: ::std::string::String = #key;
            // Deref coercion takes a Cache, &Cache, LazyLock<Cache> or
            // Arc<Cache>; a temporary (a function's Cache) lives on.
            let __larder_cache: &::larder::Cache = &#cache;
            #call
        }
    })
}
