//! Loading precompiled components and invoking them: one engine built from
//! the shared [`EngineProfile`], the pooling allocator, an `InstancePre` per
//! function, and a fresh store (WASI context, memory limit, epoch deadline)
//! per invocation.

use limes_bundle::manifest::{Limits, Manifest, Preopen, WorldKind};
use limes_bundle::profile::EngineProfile;
use limes_sdk::{Request, Response};
use std::path::PathBuf;

use std::time::{Duration, Instant};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use crate::linker::Interfaces;

mod bindings {
    wasmtime::component::bindgen!({ path: "../../wit", world: "function" });
}
use bindings::limes::function::types as wit;

/// Guest stdout/stderr kept per invocation (the rest is dropped).
pub const STDIO_CAPTURE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("engine setup failed: {0}")]
    Engine(String),
    #[error("cannot load {function}: {reason}")]
    Load { function: String, reason: String },
    #[error("no precompiled tier of {function} fits this host ({reasons}) and this loader has no JIT (build with --features jit)")]
    NoUsableTier { function: String, reasons: String },
    #[error("{function} timed out after {ms} ms (the limit is the manifest's timeout-ms unless overridden with --timeout-ms)")]
    Timeout { function: String, ms: u64 },
    #[error("{function} exceeded its memory limit of {limit} bytes (the limit is the manifest's memory-limit-mib unless overridden with --memory-limit-mib)")]
    MemoryLimit { function: String, limit: u64 },
    #[error("{function} trapped: {message}")]
    Trap { function: String, message: String },
    #[error("{function}: instantiation failed: {message}")]
    Instantiate { function: String, message: String },
    #[error("{function} has no preopen named {name:?} ({})", if declared.is_empty() { "it declares no preopens".to_string() } else { format!("it declares: {declared}") })]
    UndeclaredDir { function: String, name: String, declared: String },
    #[error("{function}: cannot preopen {path}: {message}")]
    Dir { function: String, path: PathBuf, message: String },
    #[error("{function}: request of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge { function: String, size: u64, limit: u64 },
    /// The deadline could not be set, so the call did not start.
    #[error("{function}: {source}")]
    Watchdog { function: String, source: crate::watchdog::WatchdogError },
}

impl RunError {
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            RunError::Timeout { .. } => K::Timeout,
            RunError::MemoryLimit { .. } => K::MemoryLimit,
            RunError::Trap { .. } | RunError::Instantiate { .. } => K::Trap,
            RunError::InputTooLarge { .. } => K::TooLarge,
            RunError::UndeclaredDir { .. } | RunError::Dir { .. } => K::Usage,
            RunError::NoUsableTier { .. } | RunError::Load { .. } | RunError::Engine(_) => K::Load,
            RunError::Watchdog { .. } => K::Other,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Use the pooling allocator (the default: fastest instantiation).
    pub pooling: bool,
    /// Instances that may be live at once (pool size).
    pub max_instances: u32,
    /// Host interfaces to define: all of them once (servers), or only what
    /// each component imports (one-shot runs; see `linker`).
    pub interfaces: Interfaces,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { pooling: true, max_instances: 64, interfaces: Interfaces::All }
    }
}

/// A store's data: what the host interfaces reach.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: TotalMemory,
    http: wasmtime_wasi_http::WasiHttpCtx,
    outbound: crate::wasi_http::Outbound,
}

impl wasmtime_wasi_http::WasiHttpView for Host {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// The memory limit of one instance, over all its linear memories together
/// (Wasmtime's `StoreLimits` applies its limit to each memory on its own, so
/// a component with four memories would get four times the limit).
struct TotalMemory {
    limit: usize,
    used: usize,
    hit: bool,
}

/// The error a growth past the limit traps with (classified by type).
#[derive(Debug)]
struct MemoryLimitHit;

impl std::fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit reached")
    }
}
impl std::error::Error for MemoryLimitHit {}

impl wasmtime::ResourceLimiter for TotalMemory {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let next = self.used.saturating_add(desired.saturating_sub(current));
        if next > self.limit {
            self.hit = true;
            return Err(MemoryLimitHit.into());
        }
        self.used = next;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One engine and linker shared by every function a process runs.
///
/// Compiled code carries no epoch checks (see the engine profile): a call
/// runs until it returns, traps or hits its memory limit. Wall-time limits
/// are the executor's job: the caller ends the process or thread that runs
/// [`Runtime::invoke`] at the deadline.
pub struct Runtime {
    engine: Engine,
    /// `None`: each component gets a linker of its own imports.
    linker: Option<Linker<Host>>,
}

enum Entry {
    Limes(bindings::FunctionPre<Host>),
    /// The Limes study's world (`WorldKind::ComponentRun`).
    ComponentRun {
        pre: InstancePre<Host>,
        run: ComponentExportIndex,
    },
    /// `wasi:http/incoming-handler` (`WorldKind::WasiHttp`).
    Http(wasmtime_wasi_http::p2::bindings::sync::ProxyPre<Host>),
}

/// What a function is, as far as running it goes.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub kind: WorldKind,
    pub export: String,
    pub limits: Limits,
    pub preopens: Vec<Preopen>,
    /// Origins its outbound HTTP may reach (parsed from the signed manifest).
    pub outbound: std::sync::Arc<Vec<limes_bundle::outbound::Origin>>,
}

impl FunctionSpec {
    pub fn from_manifest(m: &Manifest) -> FunctionSpec {
        FunctionSpec {
            name: m.function.name.clone(),
            kind: m.world.kind,
            export: m.world.export.clone(),
            limits: m.limits,
            preopens: m.preopens.clone(),
            // Checked when the manifest was parsed: a bad entry never gets here.
            outbound: std::sync::Arc::new(limes_bundle::outbound::parse_list(&m.allowed_outbound_hosts).unwrap_or_default()),
        }
    }
}

/// A function ready to instantiate.
pub struct LoadedFunction {
    pub spec: FunctionSpec,
    entry: Entry,
    /// Tier of the mapped artifact; `None` when compiled at load (JIT).
    pub tier: Option<String>,
    pub jit: bool,
    /// Time to map (deserialize) or compile the component.
    pub load_time: Duration,
    /// Time to resolve imports into an `InstancePre`.
    pub link_time: Duration,
}

impl LoadedFunction {
    /// The wall-time limit of one call: the override, else the manifest's.
    /// The executor enforces it (compiled code has no epoch checks).
    pub fn deadline(&self, opts: &InvokeOptions) -> Duration {
        opts.timeout.unwrap_or(Duration::from_millis(self.spec.limits.timeout_ms))
    }

    /// The error a call past its deadline ends with.
    pub fn timeout_error(&self, opts: &InvokeOptions) -> RunError {
        RunError::Timeout { function: self.spec.name.clone(), ms: self.deadline(opts).as_millis() as u64 }
    }
}

/// Per-invocation settings.
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// Host directories bound to the function's declared preopens, by name.
    pub dirs: Vec<(String, PathBuf)>,
    pub memory_limit: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_input: Option<u64>,
    /// The process ends right after this call (a one-shot `limes run`):
    /// leave the instance's memories and tables to the kernel instead of
    /// unmapping them one by one. A wasi:http call drops its store anyway:
    /// that is what ends a body the guest left unfinished.
    pub leave_to_exit: bool,
}

/// The outcome of one call.
#[derive(Debug)]
pub struct Invocation {
    pub result: Result<Response, limes_sdk::Error>,
    /// A `wasi:http` function's status and headers (its body is `result`'s).
    pub http: Option<crate::wasi_http::HttpHead>,
    /// Outbound HTTP requests the policy denied during the call.
    pub outbound_denied: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub instantiate_time: Duration,
    pub call_time: Duration,
}

impl Runtime {
    pub fn new(opts: &RuntimeOptions) -> Result<Runtime, RunError> {
        let engine_err = |e: wasmtime::Error| RunError::Engine(format!("{e:#}"));
        let profile = EngineProfile::default();
        let mut config = Config::new();
        profile.apply(&mut config);
        // Diagnostics: name the mapped functions for `perf report` (Wasmtime
        // writes /tmp/perf-PID.map). Not part of the engine profile: it
        // changes no code, so precompiled artifacts still load.
        if std::env::var_os("LIMES_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if opts.pooling {
            let n = opts.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(n)
                .total_core_instances(n * 4)
                .total_memories(n * 2)
                .total_tables(n * 4)
                .total_stacks(n)
                .max_memories_per_component(4)
                .max_tables_per_component(8)
                .max_core_instances_per_component(16)
                .max_memory_size(profile.memory_reservation as usize);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(engine_err)?;
        let linker = match opts.interfaces {
            Interfaces::All => Some(crate::linker::full(&engine).map_err(engine_err)?),
            Interfaces::Imported => None,
        };
        Ok(Runtime { engine, linker })
    }

    /// Map a precompiled artifact from an open file: the very descriptor
    /// whose inode was checked, never its store path again (which a store
    /// writer could point elsewhere after the check).
    ///
    /// # Safety
    /// `cwasm` must be a file whose content was verified against a trusted
    /// signature (the store guarantees this for its entries): deserializing
    /// native code is arbitrary code execution otherwise.
    pub unsafe fn load_precompiled(&self, spec: FunctionSpec, cwasm: &std::fs::File, tier: &str) -> Result<LoadedFunction, RunError> {
        use std::os::fd::AsRawFd;
        // Wasmtime maps a component only by path (still in 50); /proc/self/fd/N opens
        // this open file's own inode, not whatever the store path holds now.
        let by_fd = format!("/proc/self/fd/{}", cwasm.as_raw_fd());
        // SAFETY: forwarded to the caller (see above).
        self.map_and_link(spec, tier, || unsafe { Component::deserialize_file(&self.engine, &by_fd) })
    }

    /// Time `deserialize`, then link what it mapped.
    fn map_and_link(&self, spec: FunctionSpec, tier: &str, deserialize: impl FnOnce() -> wasmtime::Result<Component>) -> Result<LoadedFunction, RunError> {
        let t = Instant::now();
        let component =
            deserialize().map_err(|e| RunError::Load { function: spec.name.clone(), reason: format!("Wasmtime refused the {tier} artifact: {e:#}") })?;
        let load_time = t.elapsed();
        self.link(spec, component, Some(tier.to_string()), false, load_time)
    }

    /// Map a precompiled artifact from bytes in memory (copied into an
    /// executable mapping by Wasmtime).
    ///
    /// # Safety
    /// As [`Runtime::load_precompiled`]: `bytes` must have been verified
    /// against a trusted signature.
    pub unsafe fn load_precompiled_bytes(&self, spec: FunctionSpec, bytes: &[u8], tier: &str) -> Result<LoadedFunction, RunError> {
        // SAFETY: forwarded to the caller (see above).
        self.map_and_link(spec, tier, || unsafe { Component::deserialize(&self.engine, bytes) })
    }

    /// Compile a component at load time (the study's method, and the JIT
    /// fallback).
    #[cfg(feature = "jit")]
    pub fn load_jit(&self, spec: FunctionSpec, wasm: &[u8]) -> Result<LoadedFunction, RunError> {
        let t = Instant::now();
        let component = Component::new(&self.engine, wasm).map_err(|e| RunError::Load { function: spec.name.clone(), reason: format!("compiling: {e:#}") })?;
        let load_time = t.elapsed();
        self.link(spec, component, None, true, load_time)
    }

    fn link(&self, spec: FunctionSpec, component: Component, tier: Option<String>, jit: bool, load_time: Duration) -> Result<LoadedFunction, RunError> {
        let t = Instant::now();
        let load_err = |e: wasmtime::Error| RunError::Load { function: spec.name.clone(), reason: format!("{e:#}") };
        let own;
        let linker = match &self.linker {
            Some(l) => l,
            None => {
                own = crate::linker::for_component(&self.engine, &component).map_err(load_err)?;
                &own
            }
        };
        let pre = linker.instantiate_pre(&component).map_err(load_err)?;
        let entry = match spec.kind {
            WorldKind::Limes => Entry::Limes(bindings::FunctionPre::new(pre).map_err(load_err)?),
            WorldKind::ComponentRun => {
                let (_, iface) =
                    component.get_export(None, &spec.export).ok_or_else(|| load_err(wasmtime::Error::msg(format!("no export {}", spec.export))))?;
                let (_, run) = component.get_export(Some(&iface), "run").ok_or_else(|| load_err(wasmtime::Error::msg("no `run` function")))?;
                Entry::ComponentRun { pre, run }
            }
            WorldKind::WasiHttp => Entry::Http(wasmtime_wasi_http::p2::bindings::sync::ProxyPre::new(pre).map_err(load_err)?),
        };
        Ok(LoadedFunction { spec, entry, tier, jit, load_time, link_time: t.elapsed() })
    }

    /// A fresh store for one call of `f`: WASI context (captured stdio,
    /// the declared preopens), memory limit, outbound policy.
    fn new_store(
        &self,
        f: &LoadedFunction,
        opts: &InvokeOptions,
        memory_limit: u64,
    ) -> Result<(wasmtime::Store<Host>, MemoryOutputPipe, MemoryOutputPipe), RunError> {
        let name = &f.spec.name;
        let stdout = MemoryOutputPipe::new(STDIO_CAPTURE_LIMIT);
        let stderr = MemoryOutputPipe::new(STDIO_CAPTURE_LIMIT);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone()).allow_blocking_current_thread(true);
        for (dir_name, host) in &opts.dirs {
            let decl = f.spec.preopens.iter().find(|p| &p.name == dir_name).ok_or_else(|| RunError::UndeclaredDir {
                function: name.clone(),
                name: dir_name.clone(),
                declared: f.spec.preopens.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
            })?;
            let perms = if decl.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(host, &decl.guest_path, perms).map_err(|e| RunError::Dir {
                function: name.clone(),
                path: host.clone(),
                message: format!("{e:#}"),
            })?;
        }
        let host = Host {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: TotalMemory { limit: memory_limit.min(usize::MAX as u64) as usize, used: 0, hit: false },
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound: crate::wasi_http::Outbound::new(f.spec.outbound.clone()),
        };
        let mut store = wasmtime::Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        Ok((store, stdout, stderr))
    }

    /// Invoke `f` once on a fresh instance.
    pub fn invoke(&self, f: &LoadedFunction, req: Request, opts: &InvokeOptions) -> Result<Invocation, RunError> {
        // wasi:http's sync host blocks on its own Tokio runtime, which Tokio
        // forbids on a thread that drives another (the containerd shim calls
        // from its executor): there, the call runs on a plain thread.
        if matches!(f.entry, Entry::Http(_)) && tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| s.spawn(|| self.invoke_here(f, req, opts)).join()).unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        self.invoke_here(f, req, opts)
    }

    fn invoke_here(&self, f: &LoadedFunction, req: Request, opts: &InvokeOptions) -> Result<Invocation, RunError> {
        let name = &f.spec.name;
        let max_input = opts.max_input.unwrap_or(f.spec.limits.max_input_bytes);
        if req.body.len() as u64 > max_input {
            return Err(RunError::InputTooLarge { function: name.clone(), size: req.body.len() as u64, limit: max_input });
        }
        let memory_limit = opts.memory_limit.unwrap_or(f.spec.limits.memory_bytes);
        let timeout = f.deadline(opts);

        let (mut store, stdout, stderr) = self.new_store(f, opts, memory_limit)?;
        let denied = store.data().outbound.denied();
        let classify = |e: wasmtime::Error, stage: &str, limit_hit: bool| -> RunError {
            let trap = e.downcast_ref::<wasmtime::Trap>().copied();
            if trap == Some(wasmtime::Trap::Interrupt) {
                return RunError::Timeout { function: name.clone(), ms: timeout.as_millis() as u64 };
            }
            if limit_hit || e.downcast_ref::<MemoryLimitHit>().is_some() {
                return RunError::MemoryLimit { function: name.clone(), limit: memory_limit };
            }
            let full = format!("{e:#}");
            // The trap kind, plus what the guest said last on stderr (a Rust
            // panic message lands there just before the trap).
            let mut message = match trap {
                Some(t) => t.to_string(),
                None => full.lines().next().unwrap_or_default().to_string(),
            };
            let said = stderr.contents();
            // The guest's panic hook suggests RUST_BACKTRACE, which does
            // nothing on the host: drop that line.
            let tail: String = String::from_utf8_lossy(&said[said.len().saturating_sub(2048)..])
                .lines()
                .filter(|l| !l.contains("RUST_BACKTRACE"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string();
            if !tail.is_empty() {
                message = format!("{message}; guest stderr: {tail}");
            }
            if stage == "instantiate" {
                RunError::Instantiate { function: name.clone(), message }
            } else {
                RunError::Trap { function: name.clone(), message }
            }
        };

        let t = Instant::now();
        let result = match &f.entry {
            Entry::Limes(pre) => {
                let inst = pre.instantiate(&mut store).map_err(|e| classify(e, "instantiate", store.data().limits.hit))?;
                let instantiate_time = t.elapsed();
                let t = Instant::now();
                let wreq = wit::Request { body: req.body, content_type: req.content_type, metadata: req.metadata };
                let out = inst.limes_function_handler().call_handle(&mut store, &wreq).map_err(|e| classify(e, "call", store.data().limits.hit))?;
                (instantiate_time, t.elapsed(), from_wit(out))
            }
            Entry::ComponentRun { pre, run } => {
                let inst = pre.instantiate(&mut store).map_err(|e| classify(e, "instantiate", store.data().limits.hit))?;
                let func = inst.get_typed_func::<(String,), (String,)>(&mut store, run).map_err(|e| classify(e, "instantiate", store.data().limits.hit))?;
                let instantiate_time = t.elapsed();
                let t = Instant::now();
                match String::from_utf8(req.body) {
                    // The caller's mistake, answered as such: nothing ran.
                    Err(_) => (instantiate_time, Duration::ZERO, Err(limes_sdk::Error::bad_request("run(args) needs a UTF-8 body"))),
                    Ok(args) => {
                        let (s,) = func.call(&mut store, (args,)).map_err(|e| classify(e, "call", store.data().limits.hit))?;
                        (instantiate_time, t.elapsed(), Ok(Response::new(s.into_bytes()).with_content_type("text/plain")))
                    }
                }
            }
            Entry::Http(pre) => {
                let proxy = pre.instantiate(&mut store).map_err(|e| classify(e, "instantiate", store.data().limits.hit))?;
                let instantiate_time = t.elapsed();
                let t = Instant::now();
                let (hreq, scheme) = match crate::wasi_http::to_hyper(req) {
                    Ok(r) => r,
                    Err(m) => {
                        let inv = Invocation {
                            result: Err(limes_sdk::Error::bad_request(m)),
                            http: None,
                            outbound_denied: 0,
                            stdout: Vec::new(),
                            stderr: Vec::new(),
                            instantiate_time,
                            call_time: Duration::ZERO,
                        };
                        return Ok(inv);
                    }
                };
                use wasmtime_wasi_http::p2::bindings::http::types::Scheme as S;
                use wasmtime_wasi_http::WasiHttpView;
                let scheme = match scheme {
                    limes_bundle::outbound::Scheme::Http => S::Http,
                    limes_bundle::outbound::Scheme::Https => S::Https,
                };
                let internal = |e: wasmtime::Error| RunError::Trap { function: name.clone(), message: format!("{e:#}") };
                // The body is drained while the guest writes it (a sync
                // guest blocks once the body channel is full), by a task on
                // wasmtime-wasi's runtime that the outparam starts.
                type Pending = wasmtime_wasi::runtime::AbortOnDropJoinHandle<crate::wasi_http::Collected>;
                let slot: std::sync::Arc<std::sync::Mutex<Option<Pending>>> = Default::default();
                let slot2 = slot.clone();
                let incoming = store.data_mut().http().new_incoming_request(scheme, hreq).map_err(internal)?;
                let out = store
                    .data_mut()
                    .http()
                    .new_response_outparam_from_callback(move |r| {
                        *slot2.lock().unwrap() = Some(wasmtime_wasi::runtime::spawn(crate::wasi_http::collect(r)));
                    })
                    .map_err(internal)?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, out).map_err(|e| classify(e, "call", store.data().limits.hit))?;
                // The store goes first: a body the guest never finished ends
                // when its resources are dropped.
                drop(store);
                let pending = slot.lock().unwrap().take();
                let collected = match pending {
                    None => Err("the function returned without setting a response".to_string()),
                    Some(p) => wasmtime_wasi::runtime::in_tokio(p),
                };
                let call_time = t.elapsed();
                let (head, body) = collected.map_err(|message| RunError::Trap { function: name.clone(), message })?;
                return Ok(Invocation {
                    result: Ok(Response::new(body)),
                    http: Some(head),
                    outbound_denied: denied.load(std::sync::atomic::Ordering::Relaxed),
                    stdout: stdout.contents().to_vec(),
                    stderr: stderr.contents().to_vec(),
                    instantiate_time,
                    call_time,
                });
            }
        };
        let (instantiate_time, call_time, result) = result;
        if opts.leave_to_exit {
            std::mem::forget(store);
        } else {
            drop(store);
        }
        Ok(Invocation {
            result,
            http: None,
            outbound_denied: denied.load(std::sync::atomic::Ordering::Relaxed),
            stdout: stdout.contents().to_vec(),
            stderr: stderr.contents().to_vec(),
            instantiate_time,
            call_time,
        })
    }
}

fn from_wit(r: Result<wit::Response, wit::Error>) -> Result<Response, limes_sdk::Error> {
    match r {
        Ok(r) => Ok(Response { body: r.body, content_type: r.content_type }),
        Err(wit::Error::BadRequest(m)) => Err(limes_sdk::Error::BadRequest(m)),
        Err(wit::Error::NotFound(m)) => Err(limes_sdk::Error::NotFound(m)),
        Err(wit::Error::Internal(m)) => Err(limes_sdk::Error::Internal(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limes_bundle::manifest::Limits;

    /// Four core instances of 40 MiB each: 160 MiB in all.
    const FOUR_MEMORIES: &str = r#"
(component
  (core module $m (memory (export "mem") 640))
  (core instance $a (instantiate $m))
  (core instance $b (instantiate $m))
  (core instance $c (instantiate $m))
  (core module $main
    (memory (export "memory") 640)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $heap
      local.set $p
      global.get $heap
      local.get 3
      i32.add
      global.set $heap
      local.get $p)
    (func (export "run") (param i32 i32) (result i32)
      (i32.store (i32.const 8) (i32.const 16))
      (i32.store (i32.const 12) (i32.const 2))
      (i32.store16 (i32.const 16) (i32.const 0x6b6f))
      (i32.const 8)))
  (core instance $i (instantiate $main))
  (func $run (param "args" string) (result string)
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $inst (export "run" (func $run)))
  (export "component:run/run" (instance $inst)))
"#;

    #[test]
    fn the_memory_limit_covers_all_memories_of_an_instance() {
        let rt = Runtime::new(&RuntimeOptions { pooling: false, max_instances: 1, ..Default::default() }).unwrap();
        let component = Component::new(&rt.engine, FOUR_MEMORIES).unwrap();
        let spec = FunctionSpec {
            name: "multi".into(),
            kind: WorldKind::ComponentRun,
            export: "component:run/run".into(),
            limits: Limits { memory_bytes: 100 << 20, timeout_ms: 5000, max_input_bytes: 1024 },
            preopens: Vec::new(),
            outbound: Default::default(),
        };
        let f = rt.link(spec, component, None, true, Duration::ZERO).unwrap();
        // Each memory (40 MiB) is under 100 MiB; together (160 MiB) they are not.
        match rt.invoke(&f, Request::new("x"), &InvokeOptions::default()) {
            Err(RunError::MemoryLimit { limit, .. }) => assert_eq!(limit, 100 << 20),
            other => panic!("expected the memory limit, got {other:?}"),
        }
        let roomy = InvokeOptions { memory_limit: Some(200 << 20), ..Default::default() };
        let inv = rt.invoke(&f, Request::new("x"), &roomy).unwrap();
        assert_eq!(inv.result.unwrap().body, b"ok");
    }
}
