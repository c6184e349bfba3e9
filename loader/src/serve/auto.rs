//! The `--auto` policy: route each request to the backend (Wasm workers or
//! microVMs) with the lower recent median, trying the other now and then.

use super::*;

/// A backend `auto` can route to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Wasm,
    MicroVm,
}

impl Backend {
    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Wasm => "wasm",
            Backend::MicroVm => "microvm",
        }
    }
    pub(super) fn other(self) -> Backend {
        match self {
            Backend::Wasm => Backend::MicroVm,
            Backend::MicroVm => Backend::Wasm,
        }
    }
}

/// The `auto` rule: route each request to the backend whose median
/// latency (queue + execution, answered requests only) over its last
/// [`AUTO_WINDOW`] requests is lower; switch only when the other's median
/// is at least 10% lower (hysteresis). Starts on Wasm. The other backend is
/// tried on every [`AUTO_EXPLORE`]th request, but at most once per gap: the
/// gap starts at [`AUTO_GAP_MIN`], doubles each time a try confirms the
/// choice (up to [`AUTO_GAP_MAX`]) and resets when a try beats it. So a busy
/// server explores a few times a minute, not a sixteenth of its traffic:
/// each microVM try uses up a pre-booted VM, whose replacement boot costs
/// seconds of CPU under emulation. A try that loses also pays for itself:
/// the next one waits at least [`AUTO_TRY_SPACING`] times as long as it
/// took, so exploring costs a client at most about 5% of its time even when
/// the other backend is 20x slower (an image request on an emulated VM).
pub(super) struct AutoRouter {
    pub(super) current: Backend,
    pub(super) windows: [std::collections::VecDeque<f64>; 2],
    pub(super) requests: u64,
    pub(super) gap: Duration,
    pub(super) next_try: Option<Instant>,
}

/// Short enough that a few explorations reveal a change of regime.
pub(super) const AUTO_WINDOW: usize = 9;

pub(super) const AUTO_EXPLORE: u64 = 16;

pub(super) const AUTO_GAP_MIN: Duration = Duration::from_millis(250);

pub(super) const AUTO_GAP_MAX: Duration = Duration::from_secs(30);

pub(super) const AUTO_TRY_SPACING: u32 = 19;

impl AutoRouter {
    pub(super) fn new() -> AutoRouter {
        AutoRouter { current: Backend::Wasm, windows: Default::default(), requests: 0, gap: AUTO_GAP_MIN, next_try: None }
    }
    pub(super) fn window(&self, b: Backend) -> &std::collections::VecDeque<f64> {
        &self.windows[b as usize]
    }
    pub(super) fn p50(&self, b: Backend) -> Option<f64> {
        let mut v: Vec<f64> = self.window(b).iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
    pub(super) fn pick(&mut self, now: Instant) -> Backend {
        self.requests += 1;
        let other = self.current.other();
        // Measure the other backend early (every 4th request until it has
        // three answers), then every AUTO_EXPLORE-th; never within the gap.
        let turn = (self.window(other).len() < 3 && self.requests.is_multiple_of(4)) || self.requests.is_multiple_of(AUTO_EXPLORE);
        if turn && self.next_try.is_none_or(|t| now >= t) {
            self.next_try = Some(now + self.gap);
            other
        } else {
            self.current
        }
    }
    pub(super) fn record(&mut self, b: Backend, took: Duration, now: Instant) {
        let w = &mut self.windows[b as usize];
        w.push_back(took.as_secs_f64());
        if w.len() > AUTO_WINDOW {
            w.pop_front();
        }
        let other = self.current.other();
        let Some(cur) = self.p50(self.current) else { return };
        if b == other {
            // A try that beats the current median is worth repeating soon.
            if took.as_secs_f64() < cur {
                self.gap = AUTO_GAP_MIN;
            } else {
                self.gap = (self.gap * 2).min(AUTO_GAP_MAX);
                let paid = now + took * AUTO_TRY_SPACING;
                self.next_try = Some(self.next_try.map_or(paid, |t| t.max(paid)));
            }
        }
        if let Some(alt) = self.p50(other) {
            if self.window(other).len() >= 3 && alt < cur * 0.9 {
                tracing::info!(
                    from = self.current.name(),
                    to = other.name(),
                    current_p50_us = (cur * 1e6) as u64,
                    other_p50_us = (alt * 1e6) as u64,
                    "auto backend switch"
                );
                self.current = other;
                self.gap = AUTO_GAP_MIN;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the router on a virtual clock: one client sending a request
    /// every `every_ms`, latencies by the backend picked.
    fn drive(r: &mut AutoRouter, now: &mut Instant, n: usize, every_ms: u64, wasm_ms: f64, vm_ms: f64) -> Vec<Backend> {
        (0..n)
            .map(|_| {
                *now += Duration::from_millis(every_ms);
                let b = r.pick(*now);
                let ms = if b == Backend::Wasm { wasm_ms } else { vm_ms };
                let took = Duration::from_secs_f64(ms / 1e3);
                r.record(b, took, *now + took);
                b
            })
            .collect()
    }

    fn tries(picks: &[Backend], b: Backend) -> usize {
        picks.iter().filter(|p| **p == b).count()
    }

    #[test]
    fn auto_routes_to_the_faster_backend_with_hysteresis() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // Wasm faster (10 requests a second for 20 s): stays on Wasm and
        // tries the microVM now and then, less often as it keeps losing.
        let picks = drive(&mut r, &mut now, 200, 100, 0.3, 15.0);
        assert_eq!(r.current, Backend::Wasm);
        let vm = tries(&picks, Backend::MicroVm);
        assert!((5..=12).contains(&vm), "tried the microVM {vm} times in 200");
        assert!(picks[100..].iter().filter(|b| **b == Backend::MicroVm).count() < picks[..100].iter().filter(|b| **b == Backend::MicroVm).count());
        // The microVM becomes clearly faster: auto follows within a minute.
        drive(&mut r, &mut now, 600, 100, 5.0, 1.0);
        assert_eq!(r.current, Backend::MicroVm);
        // Only 5% apart: no flapping back.
        drive(&mut r, &mut now, 600, 100, 0.95, 1.0);
        assert_eq!(r.current, Backend::MicroVm, "switched on a lead under 10%");
        // A clear lead again: back to Wasm.
        drive(&mut r, &mut now, 600, 100, 0.5, 1.0);
        assert_eq!(r.current, Backend::Wasm);
    }

    #[test]
    fn auto_tries_the_other_backend_a_few_times_a_minute_under_load() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // 1,000 requests a second for a minute, the microVM far behind:
        // without a gap a sixteenth of them (3,750) would each use up a VM.
        let picks = drive(&mut r, &mut now, 60_000, 1, 0.3, 15.0);
        let vm = tries(&picks, Backend::MicroVm);
        assert!((3..=12).contains(&vm), "tried the microVM {vm} times in a minute");
        assert_eq!(r.current, Backend::Wasm);
    }

    #[test]
    fn a_slow_backend_is_tried_rarely_enough_to_cost_little() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // One client back to back on an image pipeline: 60 ms on Wasm,
        // 1.3 s on an emulated VM. Every 4th request early on would spend
        // most of the client's time in tries.
        let (mut busy, mut tried) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..1000 {
            let b = r.pick(now);
            let took = Duration::from_millis(if b == Backend::Wasm { 60 } else { 1300 });
            now += took;
            r.record(b, took, now);
            busy += took;
            if b == Backend::MicroVm {
                tried += took;
            }
        }
        assert_eq!(r.current, Backend::Wasm);
        let share = tried.as_secs_f64() / busy.as_secs_f64();
        // About 5% in the long run; the first try comes early, so a
        // minute's share is a little higher. Without the spacing: 16%.
        assert!(tried > Duration::ZERO && share <= 0.07, "tries took {:.1}% of the client's time", share * 100.0);
    }
}
