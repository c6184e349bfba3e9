//! Which host interfaces a linker defines.
//!
//! A server links once and runs many functions: it defines every interface
//! of `wasi:cli/command` (the sync WASI host), `wasi:http`'s outgoing side and
//! the limes types ([`Interfaces::All`]). A one-shot run links one component
//! once, and each interface it defines costs an insert per function name into
//! the linker's string pool and maps; a component imports about half of them
//! (the no-op and Mandelbrot 15 of 30, the image pipeline 18). So a one-shot
//! run defines only what its component imports ([`Interfaces::Imported`]).
//!
//! The list below mirrors `wasmtime_wasi::p2::add_to_linker_sync` and
//! `wasmtime_wasi_http::p2::add_only_http_to_linker_sync` (Wasmtime 50) one
//! interface at a time. The reference packs' tests run through both kinds
//! (`limes run` and the CLI link imports only, `serve` links all).

use wasmtime::component::{Component, HasData, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::WasiView;

use crate::runtime::Host;

/// Which interfaces to define.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Interfaces {
    /// Every host interface limes offers: one linker for many functions.
    #[default]
    All,
    /// Only those the component imports (a linker per component).
    Imported,
}

/// The limes types interface carries only types: components import it as an
/// empty instance.
const LIMES_TYPES: &str = "limes:function/types@0.1.0";

/// `wasi:io`'s resources live in the WASI context's table.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// The interface names (`package/interface`, no version) a component imports.
pub fn imported(engine: &Engine, component: &Component) -> Vec<String> {
    component.component_type().imports(engine).map(|(name, _)| unversioned(name).to_string()).collect()
}

fn unversioned(name: &str) -> &str {
    name.split_once('@').map_or(name, |(n, _)| n)
}

/// Define the interfaces `wanted` accepts (by unversioned name) in `l`.
pub fn define(l: &mut Linker<Host>, wanted: impl Fn(&str) -> bool) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets, sync};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    use wasmtime_wasi_http::p2::bindings::sync::http as wasi_http;
    use wasmtime_wasi_http::{WasiHttp, WasiHttpView};

    let options = sync::LinkOptions::default();
    let http_options = wasmtime_wasi_http::p2::bindings::LinkOptions::default();
    // (name, how to define it), in wasmtime-wasi's order.
    type Add = fn(&mut Linker<Host>, &sync::LinkOptions, &wasmtime_wasi_http::p2::bindings::LinkOptions) -> wasmtime::Result<()>;
    let table: [(&str, Add); 30] = [
        ("wasi:clocks/wall-clock", |l, _, _| clocks::wall_clock::add_to_linker::<Host, WasiClocks>(l, Host::clocks)),
        ("wasi:clocks/monotonic-clock", |l, _, _| clocks::monotonic_clock::add_to_linker::<Host, WasiClocks>(l, Host::clocks)),
        ("wasi:filesystem/preopens", |l, _, _| filesystem::preopens::add_to_linker::<Host, WasiFilesystem>(l, Host::filesystem)),
        ("wasi:random/random", |l, _, _| random::random::add_to_linker::<Host, WasiRandom>(l, Host::random)),
        ("wasi:random/insecure", |l, _, _| random::insecure::add_to_linker::<Host, WasiRandom>(l, Host::random)),
        ("wasi:random/insecure-seed", |l, _, _| random::insecure_seed::add_to_linker::<Host, WasiRandom>(l, Host::random)),
        ("wasi:cli/exit", |l, _, _| cli::exit::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/environment", |l, _, _| cli::environment::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/stdin", |l, _, _| cli::stdin::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/stdout", |l, _, _| cli::stdout::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/stderr", |l, _, _| cli::stderr::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/terminal-input", |l, _, _| cli::terminal_input::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/terminal-output", |l, _, _| cli::terminal_output::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/terminal-stdin", |l, _, _| cli::terminal_stdin::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/terminal-stdout", |l, _, _| cli::terminal_stdout::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:cli/terminal-stderr", |l, _, _| cli::terminal_stderr::add_to_linker::<Host, WasiCli>(l, Host::cli)),
        ("wasi:sockets/tcp-create-socket", |l, _, _| sockets::tcp_create_socket::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        ("wasi:sockets/instance-network", |l, _, _| sockets::instance_network::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        ("wasi:sockets/network", |l, o, _| sockets::network::add_to_linker::<Host, WasiSockets>(l, &o.into(), Host::sockets)),
        ("wasi:io/error", |l, _, _| sync::io::error::add_to_linker::<Host, HasIo>(l, |t| t.ctx().table)),
        ("wasi:io/poll", |l, _, _| sync::io::poll::add_to_linker::<Host, HasIo>(l, |t| t.ctx().table)),
        ("wasi:io/streams", |l, _, _| sync::io::streams::add_to_linker::<Host, HasIo>(l, |t| t.ctx().table)),
        ("wasi:filesystem/types", |l, _, _| sync::filesystem::types::add_to_linker::<Host, WasiFilesystem>(l, Host::filesystem)),
        ("wasi:sockets/tcp", |l, _, _| sync::sockets::tcp::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        ("wasi:sockets/udp", |l, _, _| sync::sockets::udp::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        ("wasi:sockets/udp-create-socket", |l, _, _| sync::sockets::udp_create_socket::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        ("wasi:sockets/ip-name-lookup", |l, _, _| sync::sockets::ip_name_lookup::add_to_linker::<Host, WasiSockets>(l, Host::sockets)),
        // wasi:http for every world: a limes function may call out too (only
        // to its manifest's origins, see `outbound`).
        ("wasi:http/outgoing-handler", |l, _, _| wasi_http::outgoing_handler::add_to_linker::<Host, WasiHttp>(l, Host::http)),
        ("wasi:http/types", |l, _, h| wasi_http::types::add_to_linker::<Host, WasiHttp>(l, &h.into(), Host::http)),
        ("limes:function/types", |l, _, _| l.instance(LIMES_TYPES).map(|_| ())),
    ];
    for (name, add) in table {
        if wanted(name) {
            add(l, &options, &http_options)?;
        }
    }
    Ok(())
}

/// A linker with every interface: one for many functions.
pub fn full(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    let mut l = Linker::new(engine);
    define(&mut l, |_| true)?;
    Ok(l)
}

/// A linker with only the interfaces `component` imports.
pub fn for_component(engine: &Engine, component: &Component) -> wasmtime::Result<Linker<Host>> {
    let names = imported(engine, component);
    let mut l = Linker::new(engine);
    define(&mut l, |n| names.iter().any(|i| i == n))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    /// Imports two WASI interfaces (one function each) and uses neither.
    const TWO_IMPORTS: &str = r#"(component
  (import "wasi:cli/environment@0.2.0" (instance (export "get-arguments" (func (result (list string))))))
  (import "wasi:random/insecure-seed@0.2.0" (instance (export "insecure-seed" (func (result (tuple u64 u64))))))
)"#;

    const UNKNOWN_IMPORT: &str = r#"(component
  (import "wasi:nothing/here@0.1.0" (instance (export "f" (func))))
)"#;

    fn engine() -> Engine {
        Engine::new(&Config::new()).unwrap()
    }

    #[test]
    fn imported_names_each_interface_without_its_version() {
        let e = engine();
        let c = Component::new(&e, TWO_IMPORTS).unwrap();
        assert_eq!(imported(&e, &c), ["wasi:cli/environment", "wasi:random/insecure-seed"]);
    }

    #[test]
    fn an_imports_only_linker_resolves_what_the_component_imports_and_nothing_else() {
        let e = engine();
        let c = Component::new(&e, TWO_IMPORTS).unwrap();
        for_component(&e, &c).unwrap().instantiate_pre(&c).unwrap();
        // Nothing but the imports was defined: another component that needs
        // `wasi:cli/stdout` does not link against this linker.
        let other = Component::new(&e, r#"(component (import "wasi:cli/stdout@0.2.0" (instance (export "get-stdout" (func (result u32))))))"#).unwrap();
        let err = for_component(&e, &c).unwrap().instantiate_pre(&other).err().expect("stdout was not defined");
        assert!(format!("{err:#}").contains("wasi:cli/stdout"), "{err:#}");
    }

    #[test]
    fn the_full_linker_resolves_the_same_component_and_refuses_unknown_imports() {
        let e = engine();
        let all = full(&e).unwrap();
        all.instantiate_pre(&Component::new(&e, TWO_IMPORTS).unwrap()).unwrap();
        let unknown = Component::new(&e, UNKNOWN_IMPORT).unwrap();
        assert!(all.instantiate_pre(&unknown).is_err());
        assert!(for_component(&e, &unknown).unwrap().instantiate_pre(&unknown).is_err());
    }
}
