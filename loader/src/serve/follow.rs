//! Following the store: serve what is installed, replace what was switched,
//! drop what was removed, and publish what is served (for `limes list` and
//! `limes sync`).

use super::*;

/// Re-hash what the workers will map, here first, so a tampered store is a
/// verification failure of the server itself (the workers re-hash too).
pub(super) fn check_wasm_artifacts(f: &crate::store::InstalledFunction) -> Result<(), crate::store::StoreError> {
    let (best, _) = crate::select::best_tier_of(&f.manifest, |p| f.has(p));
    let mut check = vec![f.manifest.component.as_str()];
    check.extend(best.map(|a| a.path.as_str()));
    f.check_files(&check, crate::store::Integrity::Rehash)
}

/// Write what serve is doing per function (backend; for `auto`, where it
/// routes and the medians behind it; the object served and its request and
/// failure counts since it was loaded) into the store, when it changed.
pub(super) fn publish_state(app: &Arc<AppState>) {
    use crate::store::{AutoMedians, ServeState, ServedBy, ServedFunction};
    let functions = app.functions.read().unwrap().clone();
    let mut state = ServeState::for_this_process();
    for (n, f) in &functions {
        let (backend, routing_to, p50_us) = match &f.exec {
            Executor::Workers(_) | Executor::Shared(_) => (ServedBy::Wasm, None, None),
            Executor::InProcess(_) => (ServedBy::WasmInProcess, None, None),
            Executor::MicroVm(_) => (ServedBy::Microvm, None, None),
            Executor::Auto { router, .. } => {
                let r = router.lock().unwrap();
                let p50 = |b| r.p50(b).map(|s| (s * 1e6) as u64);
                (ServedBy::Auto, Some(r.current.name().to_string()), Some(AutoMedians { wasm: p50(Backend::Wasm), microvm: p50(Backend::MicroVm) }))
            }
        };
        let served = ServedFunction {
            backend,
            routing_to,
            p50_us,
            object: f.object.clone(),
            requests: f.served.load(Ordering::Relaxed),
            failures: f.failed.load(Ordering::Relaxed),
        };
        state.functions.insert(n.clone(), served);
    }
    let text = state.to_json();
    let mut last = app.published.lock().unwrap();
    if *last != text {
        if let Ok(store) = Store::open(&app.store_root) {
            if store.write_file(crate::store::SERVE_STATE, &text).is_ok() {
                *last = text;
            }
        }
    }
}

/// How often serve looks for installs and removals.
pub(super) const STORE_POLL: Duration = Duration::from_millis(250);

/// Every record is read again at least this often, changed or not: a
/// function that failed to load is tried again.
pub(super) const FULL_RECHECK: Duration = Duration::from_secs(10);

/// What a poll compares before reading any record: the change times of
/// the records' directory (a record is written by a rename into it) and of
/// the trust directory (keys and pins). `None` (read everything) when one
/// changed within the last [`SETTLE`]: file-system timestamps are coarse,
/// and a second change within the same tick would leave them as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoreSeen {
    functions: (i64, i64, i64, i64, u64),
    trust: Option<(i64, i64, i64, i64, u64)>,
}

/// See [`StoreSeen`].
const SETTLE: Duration = Duration::from_secs(2);

impl StoreSeen {
    pub(super) fn now(app: &AppState) -> Option<StoreSeen> {
        use std::os::unix::fs::MetadataExt;
        let stamp = |p: &std::path::Path| -> Option<(i64, i64, i64, i64, u64)> {
            let m = match std::fs::symlink_metadata(p) {
                Ok(m) => m,
                // No trust directory (yet): a state of its own.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some((0, 0, 0, 0, 0)),
                Err(_) => return None,
            };
            let changed = std::time::UNIX_EPOCH + Duration::new(m.ctime().max(m.mtime()) as u64, 0);
            if std::time::SystemTime::now().duration_since(changed).map_or(true, |age| age < SETTLE) {
                return None;
            }
            Some((m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.ino()))
        };
        let functions = stamp(&app.store_root.join("functions"))?;
        let dir = app.opts.anchors.dir();
        let trust = if dir.as_os_str().is_empty() { None } else { Some(stamp(dir)?) };
        Some(StoreSeen { functions, trust })
    }
}

/// Make the served set match the store: start what was installed or
/// replaced, drop what was removed (requests in flight keep their `Served`
/// until they finish). With `strict`, any load error is returned; otherwise
/// it is logged and that function is not served.
pub(super) async fn reconcile(app: &Arc<AppState>, strict: bool) -> Result<(), ServeError> {
    let store = Store::open(&app.store_root)?;
    // Keys added to the trust directory since (by `limes install`) count.
    let anchors = app.opts.anchors.reload()?;
    let records: Vec<crate::store::Installed> =
        store.list()?.into_iter().filter(|r| app.opts.functions.is_empty() || app.opts.functions.contains(&r.name)).collect();
    let current: HashMap<String, String> = app.functions.read().unwrap().iter().map(|(n, f)| (n.clone(), f.object.clone())).collect();
    // Dedicated workers while every function served by workers fits in
    // the budget; beyond it, what (re)loads now shares one pool.
    let by_workers = records.iter().filter(|r| served_by_workers(&app.opts, &r.name)).count();
    let shared = by_workers.saturating_mul(app.opts.workers.max(1)) > app.opts.max_dedicated_workers;
    for r in &records {
        if current.get(&r.name) == Some(&r.object) {
            continue;
        }
        match load_function(app, &store, &anchors, &r.name, shared).await {
            Ok(served) => {
                tracing::info!(function = %r.name, version = %r.version, "serving");
                app.functions.write().unwrap().insert(r.name.clone(), served);
            }
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::error!(function = %r.name, error = %e, "cannot serve this function");
                app.functions.write().unwrap().remove(&r.name);
            }
        }
    }
    let gone: Vec<String> = current.keys().filter(|n| !records.iter().any(|r| &r.name == *n)).cloned().collect();
    for n in gone {
        tracing::info!(function = %n, "removed from the store; no longer served");
        app.functions.write().unwrap().remove(&n);
    }
    Ok(())
}

/// Whether `name` runs in worker processes (not a microVM, not `auto`,
/// not in this process).
fn served_by_workers(opts: &ServeOptions, name: &str) -> bool {
    !opts.in_process && !opts.microvm_functions.iter().any(|m| m == name) && !opts.auto_functions.iter().any(|m| m == name)
}

/// The shared pool, started on first use.
async fn shared_pool(app: &Arc<AppState>, anchors: &crate::trust::Anchors) -> Result<Arc<Pool>, ServeError> {
    let pool = app
        .shared
        .get_or_try_init(|| async {
            let spec = WorkerSpec {
                exe: app.worker_exe.clone(),
                store: app.store_root.clone(),
                function: "(shared)".into(),
                shared: Some(app.opts.worker_cache),
                dirs: app.opts.dirs.clone(),
                start_timeout: Duration::from_secs(30),
                anchors: anchors.clone(),
            };
            let pool = Pool::start(spec, app.opts.shared_workers).await?;
            tracing::info!(workers = app.opts.shared_workers, cache = app.opts.worker_cache, "shared workers ready");
            Ok::<_, ServeError>(pool)
        })
        .await?;
    Ok(pool.clone())
}

/// Load one installed function: in this process, as a pool of workers of
/// its own, or (`shared`) on the shared workers.
pub(super) async fn load_function(
    app: &Arc<AppState>,
    store: &Store,
    anchors: &crate::trust::Anchors,
    name: &str,
    shared: bool,
) -> Result<Arc<Served>, ServeError> {
    let f = store.load(name, anchors)?;
    // Serve re-hashes each artifact once per load: a long-lived process
    // must not depend on the store staying untouched since install.
    // (Workers re-hash what they map too; checking here first makes a
    // tampered store a verification failure of the server itself.)
    let spec = FunctionSpec::from_manifest(&f.manifest);
    let vm_pool = |vm_opts: crate::microvm::VmOptions| {
        let size = app.opts.vm_pool;
        let f2 = f.clone();
        tokio::task::spawn_blocking(move || crate::microvm::pool::VmPool::start(f2, vm_opts, size))
    };
    let mut vm_opts = app.opts.vm.clone();
    vm_opts.timeout = Duration::from_millis(spec.limits.timeout_ms);
    if vm_opts.probe_cache.is_none() {
        vm_opts.probe_cache = Some(app.store_root.join("microvm-accel"));
    }
    let worker_spec = WorkerSpec {
        exe: app.worker_exe.clone(),
        store: app.store_root.clone(),
        function: name.to_string(),
        shared: None,
        dirs: app.opts.dirs.clone(),
        start_timeout: Duration::from_secs(30),
        anchors: anchors.clone(),
    };
    let exec = match &app.runtime {
        _ if app.opts.auto_functions.iter().any(|m| m == name) => {
            check_wasm_artifacts(&f)?;
            let wasm = Pool::start(worker_spec, app.opts.workers).await?;
            let vm = vm_pool(vm_opts).await.map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))??;
            tracing::info!(function = %name, hypervisor = %vm.hypervisor, "auto: workers and microVMs ready");
            Executor::Auto { wasm, vm, router: std::sync::Mutex::new(AutoRouter::new()) }
        }
        _ if app.opts.microvm_functions.iter().any(|m| m == name) => {
            let pool = vm_pool(vm_opts).await.map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))??;
            tracing::info!(function = %name, hypervisor = %pool.hypervisor, vms = app.opts.vm_pool, "microVMs booted and waiting");
            Executor::MicroVm(pool)
        }
        Some(rt) => {
            let loaded = crate::load::load(rt, &f, LoadMode::Auto, crate::store::Integrity::Rehash)?;
            tracing::info!(function = %name, tier = loaded.tier.as_deref().unwrap_or("jit"), "loaded in process");
            Executor::InProcess(loaded)
        }
        None if shared => {
            check_wasm_artifacts(&f)?;
            tracing::debug!(function = %name, "on the shared workers");
            Executor::Shared(shared_pool(app, anchors).await?)
        }
        None => {
            check_wasm_artifacts(&f)?;
            let pool = Pool::start(worker_spec, app.opts.workers).await?;
            tracing::info!(function = %name, tier = pool.ready.tier.as_deref().unwrap_or("jit"), workers = app.opts.workers, "workers ready");
            Executor::Workers(pool)
        }
    };
    Ok(Arc::new(Served {
        spec,
        exec,
        object: f.record.object.clone(),
        version: f.record.version.clone(),
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    }))
}
