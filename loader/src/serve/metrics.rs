//! Prometheus metrics of `limes serve`: request counts and latency histograms
//! recorded as requests finish, and the pools' and `limes sync`'s counters read
//! at scrape time (`GET /metrics`).

use super::*;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) function: String,
    pub(super) status: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct LatencyLabels {
    pub(super) function: String,
    pub(super) phase: String,
}

pub(super) type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

pub(super) fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s, doubling.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// The server's Prometheus registry (prometheus-client): request counts and
/// latency histograms recorded as requests finish, and the pools' own
/// counters read at scrape time.
pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: Family<RequestLabels, Counter>,
    pub(super) latency: LatencyFamily,
    /// Outbound HTTP requests denied by the manifest's allow-list.
    pub(super) outbound_denied: Family<FunctionLabel, Counter>,
}

/// A label set of just the function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct FunctionLabel {
    pub(super) function: String,
}

/// Reads worker replacements and microVM boots from the pools on each scrape.
/// Also reads what `limes sync` recorded per function in the store.
pub(super) struct PoolCounters(pub(super) Arc<std::sync::RwLock<HashMap<String, Arc<Served>>>>, PathBuf);

impl std::fmt::Debug for PoolCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCounters")
    }
}

impl prometheus_client::collector::Collector for PoolCounters {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let functions = self.0.read().unwrap().clone();
        let mut names: Vec<&String> = functions.keys().collect();
        names.sort();
        let (mut replaced, mut boots, mut choice, mut p50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut live, mut queue_timeouts) = (Vec::new(), Vec::new());
        let (mut versions, mut polls, mut rollbacks) = (Vec::new(), Vec::new(), Vec::new());
        let store = Store::open(&self.1).ok();
        for n in names {
            versions.push((n.as_str(), functions[n].version.clone(), ConstGauge::new(1i64)));
            if let Some(st) = store.as_ref().map(|s| crate::sync::state::SyncState::load(s, n)).filter(|st| !st.reference.is_empty()) {
                if let Some(at) = st.last_sync {
                    polls.push((n.as_str(), if st.last_ok { "ok" } else { "error" }.to_string(), ConstGauge::new(at as i64)));
                }
                if let Some(rb) = &st.last_rollback {
                    rollbacks.push((n.as_str(), rb.from.clone(), ConstCounter::new(st.rollbacks)));
                }
            }
            let exec = &functions[n].exec;
            if let Executor::Workers(pool) | Executor::Auto { wasm: pool, .. } = exec {
                for reason in ["timeout", "crash"] {
                    replaced.push((n.as_str(), reason, ConstCounter::new(pool.replaced.lock().unwrap().get(reason).copied().unwrap_or(0))));
                }
                live.push((n.as_str(), "wasm", ConstGauge::new(pool.live.load(Ordering::Relaxed) as i64)));
                queue_timeouts.push((n.as_str(), "wasm", ConstCounter::new(pool.queue_timeouts.load(Ordering::Relaxed))));
            }
            if let Executor::MicroVm(pool) | Executor::Auto { vm: pool, .. } = exec {
                boots.push((n.as_str(), "ok", ConstCounter::new(pool.boots.load(Ordering::Relaxed))));
                boots.push((n.as_str(), "failed", ConstCounter::new(pool.boot_failures.load(Ordering::Relaxed))));
                boots.push((n.as_str(), "faulted", ConstCounter::new(pool.faults.load(Ordering::Relaxed))));
            }
            if let Executor::Auto { router, .. } = exec {
                let r = router.lock().unwrap();
                for b in [Backend::Wasm, Backend::MicroVm] {
                    choice.push((n.as_str(), b.name(), ConstGauge::new(i64::from(r.current == b))));
                    p50.extend(r.p50(b).map(|v| (n.as_str(), b.name(), ConstGauge::new(v))));
                }
            }
        }
        // The shared workers serve every function on them: one row, `*`.
        if let Some(pool) = functions.values().find_map(|f| if let Executor::Shared(p) = &f.exec { Some(p.clone()) } else { None }) {
            for reason in ["timeout", "crash"] {
                replaced.push(("*", reason, ConstCounter::new(pool.replaced.lock().unwrap().get(reason).copied().unwrap_or(0))));
            }
            live.push(("*", "wasm", ConstGauge::new(pool.live.load(Ordering::Relaxed) as i64)));
            queue_timeouts.push(("*", "wasm", ConstCounter::new(pool.queue_timeouts.load(Ordering::Relaxed))));
        }
        const REPLACED: &str = "Worker processes killed and replaced, by reason (timeout: past its deadline; crash: died or broke the protocol).";
        encode_rows(&mut encoder, "limes_worker_replacements", REPLACED, Counter, "reason", replaced)?;
        encode_rows(&mut encoder, "limes_workers_live", "Worker processes alive (idle or answering), per function.", Gauge, "backend", live)?;
        encode_rows(
            &mut encoder,
            "limes_queue_timeouts",
            "Requests answered 503 because no worker became free within the queue timeout.",
            Counter,
            "backend",
            queue_timeouts,
        )?;
        encode_rows(&mut encoder, "limes_microvm_boots", "microVMs of the pre-booted pool, by outcome (ok: booted; failed: did not boot; faulted: flooded its console or ended unasked, killed and replaced).", Counter, "outcome", boots)?;
        encode_rows(
            &mut encoder,
            "limes_auto_backend",
            "For functions served with --auto: 1 for the backend requests are routed to.",
            Gauge,
            "backend",
            choice,
        )?;
        encode_rows(&mut encoder, "limes_auto_p50_seconds", "For --auto functions: median latency per backend over its recent window.", Gauge, "backend", p50)?;
        encode_rows(&mut encoder, "limes_served_version", "1 for the version each function is served at.", Gauge, "version", versions)?;
        encode_rows(
            &mut encoder,
            "limes_sync_last_poll_timestamp_seconds",
            "When `limes sync` last polled the function's registry tag (Unix seconds), labelled with its result (ok, error).",
            Gauge,
            "result",
            polls,
        )?;
        encode_rows(
            &mut encoder,
            "limes_sync_rollbacks",
            "Automatic and manual rollbacks, labelled with the version the last one left.",
            Counter,
            "from",
            rollbacks,
        )
    }
}

/// One metric family read at scrape time: a value per (function, `label`).
pub(super) fn encode_rows<V: AsRef<str>, M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    kind: prometheus_client::metrics::MetricType,
    label: &str,
    rows: Vec<(&str, V, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (function, value, metric) in rows {
        let labels = vec![("function".to_string(), function.to_string()), (label.to_string(), value.as_ref().to_string())];
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Metrics {
    pub(super) fn new(functions: Arc<std::sync::RwLock<HashMap<String, Arc<Served>>>>, store_root: PathBuf) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("limes_requests", "Invocations by function and HTTP status.", requests.clone());
        registry.register(
            "limes_request_duration_seconds",
            "Invocation latency (queue + execution); cold is the first invocation after a load.",
            latency.clone(),
        );
        let outbound_denied = Family::<FunctionLabel, Counter>::default();
        registry.register(
            "limes_outbound_denied",
            "Outbound HTTP requests of wasi:http functions denied because their origin is not in the manifest's allowed-outbound-hosts.",
            outbound_denied.clone(),
        );
        registry.register_collector(Box::new(PoolCounters(functions, store_root)));
        Metrics { registry, requests, latency, outbound_denied }
    }
}

pub(super) async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &app.metrics.registry) {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("encoding metrics: {e}"));
    }
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
