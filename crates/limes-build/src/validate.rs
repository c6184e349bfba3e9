//! Checks that a component exports the limes world (or the Limes study's
//! `component:run` world) with compatible types, and that it imports nothing
//! a limes host does not provide.

use limes_bundle::manifest::WorldKind;
use wit_parser::{Resolve, Type, TypeDefKind, WorldItem, WorldKey};

/// The world this build of limes-pack targets, as shipped in `wit/`.
pub const FUNCTION_WIT: &str = include_str!("../../../wit/function.wit");
pub const HANDLER_INTERFACE: &str = "limes:function/handler";
pub const WORLD_VERSION: &str = "0.1.0";
const STUDY_INTERFACE: &str = "component:run/run";
/// The standard HTTP handler (`wasi:http/proxy`'s export).
pub const HTTP_INTERFACE: &str = "wasi:http/incoming-handler";
/// The WASI 0.2 packages the loader links (wasmtime-wasi's p2 host and
/// wasmtime-wasi-http): an import of any other package could never load.
const PROVIDED_WASI: &[&str] = &["wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/", "wasi:sockets/", "wasi:http/"];

/// What validation learned about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    pub kind: WorldKind,
    /// Full name of the exported interface, with version.
    pub export: String,
    /// Imported interfaces, sorted.
    pub imports: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{0} is not a WebAssembly component ({1}); build it for wasm32-wasip2 as a cdylib")]
    NotAComponent(String, String),
    #[error(
        "{what} is not a limes function: it exports neither `{HANDLER_INTERFACE}` nor `{HTTP_INTERFACE}@0.2` (found exports [{found}]). \
         Write `pub fn handle(req: limes_sdk::Request) -> Result<limes_sdk::Response, limes_sdk::Error>` \
         and add `limes_sdk::export!(handle);` to the crate's lib.rs, or export wasi:http (see `limes-pack new --template http`)"
    )]
    WrongWorld { what: String, found: String },
    #[error("{what}: exported `{export}` is incompatible with limes:function@{WORLD_VERSION}: {detail}")]
    IncompatibleTypes { what: String, export: String, detail: String },
    #[error(
        "{what} imports {imports:?}, which no limes host provides (only WASI 0.2's cli, clocks, filesystem, io, \
         random, sockets and http are); remove the dependency that pulls them in"
    )]
    ForbiddenImports { what: String, imports: Vec<String> },
}

fn interface_name(resolve: &Resolve, key: &WorldKey, item: &WorldItem) -> Option<String> {
    match item {
        WorldItem::Interface { id, .. } => resolve.id_of(*id).or_else(|| match key {
            WorldKey::Name(n) => Some(n.clone()),
            WorldKey::Interface(_) => None,
        }),
        WorldItem::Function(f) => Some(format!("func {}", f.name)),
        WorldItem::Type { .. } => None,
    }
}

/// Split `ns:pkg/iface@1.2.3` into (`ns:pkg/iface`, `1.2.3`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

fn is_allowed_import(name: &str) -> bool {
    let (base, version) = split_version(name);
    let v02 = version.is_some_and(|v| v.starts_with("0.2."));
    (PROVIDED_WASI.iter().any(|p| base.starts_with(p)) && v02)
        // Types-only interface of our own world (records used by the handler).
        || (base == "limes:function/types" && version.is_some_and(|v| v.starts_with("0.1.")))
}

/// Validate `wasm` (its display name `what` goes into error messages).
pub fn validate_component(wasm: &[u8], what: &str) -> Result<ComponentInfo, ValidateError> {
    if !wasmparser::Parser::is_component(wasm) {
        let why = if wasmparser::Parser::is_core_wasm(wasm) { "it is a core module" } else { "bad magic" };
        return Err(ValidateError::NotAComponent(what.into(), why.into()));
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator.validate_all(wasm).map_err(|e| ValidateError::NotAComponent(what.into(), format!("invalid: {e}")))?;
    let decoded = wit_parser::decoding::decode(wasm).map_err(|e| ValidateError::NotAComponent(what.into(), format!("cannot decode: {e:#}")))?;
    let (resolve, world) = match decoded {
        wit_parser::decoding::DecodedWasm::Component(r, w) => (r, w),
        wit_parser::decoding::DecodedWasm::WitPackage(..) => {
            return Err(ValidateError::NotAComponent(what.into(), "it is a WIT package, not a component".into()))
        }
    };
    let w = &resolve.worlds[world];

    let mut imports: Vec<String> = w.imports.iter().filter_map(|(k, i)| interface_name(&resolve, k, i)).collect();
    imports.sort();
    let forbidden: Vec<String> = imports.iter().filter(|i| !is_allowed_import(i)).cloned().collect();
    if !forbidden.is_empty() {
        return Err(ValidateError::ForbiddenImports { what: what.into(), imports: forbidden });
    }

    let exports: Vec<(String, &WorldItem)> = w.exports.iter().filter_map(|(k, i)| interface_name(&resolve, k, i).map(|n| (n, i))).collect();
    for (name, item) in &exports {
        let (base, version) = split_version(name);
        let WorldItem::Interface { id, .. } = item else { continue };
        if base == HANDLER_INTERFACE && version.is_some_and(|v| v.starts_with("0.1.")) {
            check_handler(&resolve, *id).map_err(|detail| ValidateError::IncompatibleTypes { what: what.into(), export: name.clone(), detail })?;
            return Ok(ComponentInfo { kind: WorldKind::Limes, export: name.clone(), imports });
        }
        if base == HTTP_INTERFACE && version.is_some_and(|v| v.starts_with("0.2.")) {
            let f = resolve.interfaces[*id].functions.get("handle");
            if f.is_none_or(|f| f.params.len() != 2 || f.result.is_some()) {
                return Err(ValidateError::IncompatibleTypes {
                    what: what.into(),
                    export: name.clone(),
                    detail: "`handle` must be `func(request: incoming-request, response-out: response-outparam)`".into(),
                });
            }
            return Ok(ComponentInfo { kind: WorldKind::WasiHttp, export: name.clone(), imports });
        }
        if base == STUDY_INTERFACE {
            check_study(&resolve, *id).map_err(|detail| ValidateError::IncompatibleTypes { what: what.into(), export: name.clone(), detail })?;
            return Ok(ComponentInfo { kind: WorldKind::ComponentRun, export: name.clone(), imports });
        }
    }
    Err(ValidateError::WrongWorld { what: what.into(), found: exports.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ") })
}

fn reference() -> (Resolve, wit_parser::InterfaceId) {
    let mut r = Resolve::default();
    r.push_str("function.wit", FUNCTION_WIT).expect("shipped WIT parses");
    let id = r.interfaces.iter().find(|(_, i)| i.name.as_deref() == Some("handler")).map(|(id, _)| id).expect("handler interface");
    (r, id)
}

fn check_handler(resolve: &Resolve, id: wit_parser::InterfaceId) -> Result<(), String> {
    let (rr, rid) = reference();
    let want = &rr.interfaces[rid].functions["handle"];
    let got = resolve.interfaces[id].functions.get("handle").ok_or("it has no `handle` function")?;
    compare_funcs(&rr, want, resolve, got)
}

fn check_study(resolve: &Resolve, id: wit_parser::InterfaceId) -> Result<(), String> {
    let f = resolve.interfaces[id].functions.get("run").ok_or("it has no `run` function")?;
    let ok = f.params.len() == 1 && f.params[0].ty == Type::String && f.result == Some(Type::String);
    if ok {
        Ok(())
    } else {
        Err("`run` must be `func(args: string) -> string`".into())
    }
}

fn compare_funcs(ra: &Resolve, a: &wit_parser::Function, rb: &Resolve, b: &wit_parser::Function) -> Result<(), String> {
    if a.params.len() != b.params.len() {
        return Err(format!("`{}` takes {} parameters, expected {}", b.name, b.params.len(), a.params.len()));
    }
    for (pa, pb) in a.params.iter().zip(&b.params) {
        same_type(ra, &pa.ty, rb, &pb.ty).map_err(|e| format!("parameter `{}`: {e}", pb.name))?;
    }
    match (&a.result, &b.result) {
        (None, None) => Ok(()),
        (Some(ta), Some(tb)) => same_type(ra, ta, rb, tb).map_err(|e| format!("result: {e}")),
        _ => Err("result presence differs".into()),
    }
}

fn resolve_alias(r: &Resolve, mut t: Type) -> Type {
    while let Type::Id(id) = t {
        match &r.types[id].kind {
            TypeDefKind::Type(inner) => t = *inner,
            _ => break,
        }
    }
    t
}

fn opt_same(ra: &Resolve, a: &Option<Type>, rb: &Resolve, b: &Option<Type>) -> Result<(), String> {
    match (a, b) {
        (None, None) => Ok(()),
        (Some(x), Some(y)) => same_type(ra, x, rb, y),
        _ => Err("payload presence differs".into()),
    }
}

/// Structural equality of two WIT types living in different resolves.
fn same_type(ra: &Resolve, a: &Type, rb: &Resolve, b: &Type) -> Result<(), String> {
    let (a, b) = (resolve_alias(ra, *a), resolve_alias(rb, *b));
    let (ia, ib) = match (a, b) {
        (Type::Id(x), Type::Id(y)) => (x, y),
        (Type::Id(_), _) | (_, Type::Id(_)) => return Err(format!("expected {a:?}-shaped type, found {b:?}")),
        _ if a == b => return Ok(()),
        _ => return Err(format!("expected {a:?}, found {b:?}")),
    };
    use TypeDefKind as K;
    match (&ra.types[ia].kind, &rb.types[ib].kind) {
        (K::Record(x), K::Record(y)) => {
            if x.fields.len() != y.fields.len() {
                return Err(format!("record has {} fields, expected {}", y.fields.len(), x.fields.len()));
            }
            for (fa, fb) in x.fields.iter().zip(&y.fields) {
                if fa.name != fb.name {
                    return Err(format!("record field `{}` where `{}` was expected", fb.name, fa.name));
                }
                same_type(ra, &fa.ty, rb, &fb.ty).map_err(|e| format!("field `{}`: {e}", fa.name))?;
            }
            Ok(())
        }
        (K::Variant(x), K::Variant(y)) => {
            if x.cases.len() != y.cases.len() {
                return Err(format!("variant has {} cases, expected {}", y.cases.len(), x.cases.len()));
            }
            for (ca, cb) in x.cases.iter().zip(&y.cases) {
                if ca.name != cb.name {
                    return Err(format!("variant case `{}` where `{}` was expected", cb.name, ca.name));
                }
                opt_same(ra, &ca.ty, rb, &cb.ty).map_err(|e| format!("case `{}`: {e}", ca.name))?;
            }
            Ok(())
        }
        (K::Enum(x), K::Enum(y)) => {
            let na: Vec<_> = x.cases.iter().map(|c| &c.name).collect();
            let nb: Vec<_> = y.cases.iter().map(|c| &c.name).collect();
            if na == nb {
                Ok(())
            } else {
                Err(format!("enum cases {nb:?}, expected {na:?}"))
            }
        }
        (K::Flags(x), K::Flags(y)) => {
            let na: Vec<_> = x.flags.iter().map(|c| &c.name).collect();
            let nb: Vec<_> = y.flags.iter().map(|c| &c.name).collect();
            if na == nb {
                Ok(())
            } else {
                Err(format!("flags {nb:?}, expected {na:?}"))
            }
        }
        (K::Tuple(x), K::Tuple(y)) => {
            if x.types.len() != y.types.len() {
                return Err("tuple arity differs".into());
            }
            for (ta, tb) in x.types.iter().zip(&y.types) {
                same_type(ra, ta, rb, tb)?;
            }
            Ok(())
        }
        (K::List(x), K::List(y)) | (K::Option(x), K::Option(y)) => same_type(ra, x, rb, y),
        (K::Result(x), K::Result(y)) => {
            opt_same(ra, &x.ok, rb, &y.ok).map_err(|e| format!("ok: {e}"))?;
            opt_same(ra, &x.err, rb, &y.err).map_err(|e| format!("err: {e}"))
        }
        (x, y) => Err(format!("expected {}, found {}", x.as_str(), y.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_allowlist() {
        assert!(is_allowed_import("wasi:cli/stdout@0.2.6"));
        assert!(is_allowed_import("wasi:filesystem/preopens@0.2.0"));
        assert!(is_allowed_import("limes:function/types@0.1.0"));
        assert!(!is_allowed_import("wasi:http/outgoing-handler@0.3.0"));
        assert!(is_allowed_import("wasi:http/outgoing-handler@0.2.4"));
        assert!(!is_allowed_import("wasi:keyvalue/store@0.2.0"));
        assert!(!is_allowed_import("acme:db/query@1.0.0"));
        assert!(!is_allowed_import("func host-log"));
    }

    #[test]
    fn rejects_core_modules_and_garbage() {
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(validate_component(core, "m"), Err(ValidateError::NotAComponent(..))));
        assert!(matches!(validate_component(b"nope", "m"), Err(ValidateError::NotAComponent(..))));
    }

    #[test]
    fn reference_world_compares_equal_to_itself() {
        let (r, id) = reference();
        check_handler(&r, id).unwrap();
    }
}
