//! Synthetic components from ~10 KB to ~10 MB of code: cold start against
//! component size, compile-at-load vs mapping a precompiled artifact.

use crate::{ScalingRow, Stats};
use anyhow::Result;
use limes_bundle::profile::{EngineProfile, Tier};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

/// A component whose core module has enough small functions to be about
/// `target` bytes, exporting `run: func() -> u32`. `run` calls a fixed
/// number of them, so the call costs the same at every size and the
/// measurement shows what loading costs.
pub fn component_of_size(target: u64) -> Result<Vec<u8>> {
    let per_fn = 37u64; // measured: bytes of binary per generated function
    let n = (target / per_fn).max(1);
    let mut wat = String::with_capacity(n as usize * 160);
    wat.push_str("(component (core module $m\n");
    for i in 0..n {
        let _ = writeln!(
            wat,
            "(func $f{i} (param i32) (result i32) local.get 0 i32.const {i} i32.add i32.const 7 i32.mul local.get 0 i32.xor i32.const 3 i32.shr_u local.get 0 i32.const {k} i32.rotl i32.add i32.const 11 i32.sub)",
            k = i % 31
        );
    }
    wat.push_str("(func (export \"run\") (result i32) (local $a i32)\n");
    for i in 0..n.min(16) {
        let _ = writeln!(wat, "local.get $a call $f{i} local.set $a");
    }
    wat.push_str("local.get $a))\n(core instance $i (instantiate $m))\n(func (export \"run\") (result u32) (canon lift (core func $i \"run\"))))");
    Ok(wat::parse_str(&wat)?)
}

/// Wasmtime's error type is its own; carry its full message into anyhow.
trait W<T> {
    fn w(self) -> Result<T>;
}
impl<T> W<T> for wasmtime::Result<T> {
    fn w(self) -> Result<T> {
        self.map_err(|e| anyhow::anyhow!("{e:#}"))
    }
}

fn runtime_engine(profile: &EngineProfile) -> Result<Engine> {
    let mut c = Config::new();
    profile.apply(&mut c);
    Engine::new(&c).w()
}

fn start(engine: &Engine, component: &Component) -> Result<u32> {
    let linker = Linker::<()>::new(engine);
    let mut store = Store::new(engine, ());
    store.set_epoch_deadline(u64::MAX / 2);
    let inst = linker.instantiate(&mut store, component).w()?;
    let run = inst.get_typed_func::<(), (u32,)>(&mut store, "run").w()?;
    Ok(run.call(&mut store, ()).w()?.0)
}

/// Where one AOT cold start's time goes, per size (p50 of `runs`):
/// deserialize (map the file, decode its metadata, make the code
/// executable), instantiate + call, and drop (unmap).
pub fn breakdown(sizes: &[u64], profile: &EngineProfile, runs: usize, work: &Path) -> Result<Vec<(u64, [f64; 3])>> {
    let tier = Tier::best_for_host().expect("baseline tier fits");
    let engine = runtime_engine(profile)?;
    let mut out = Vec::new();
    for &size in sizes {
        let wasm = component_of_size(size)?;
        let cwasm = limes_build::aot::engine_for(&tier, profile)?.precompile_component(&wasm).w()?;
        let path = work.join(format!("breakdown-{size}.cwasm"));
        std::fs::write(&path, &cwasm)?;
        let mut phases: [Vec<f64>; 3] = Default::default();
        for _ in 0..runs {
            let t = Instant::now();
            // SAFETY: we just compiled this file ourselves.
            let c = unsafe { Component::deserialize_file(&engine, &path) }.w()?;
            let t1 = Instant::now();
            start(&engine, &c)?;
            let t2 = Instant::now();
            drop(c);
            let t3 = Instant::now();
            for (v, d) in phases.iter_mut().zip([t1 - t, t2 - t1, t3 - t2]) {
                v.push(d.as_secs_f64() * 1e6);
            }
        }
        let p50 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [a, b, c] = &mut phases;
        out.push((wasm.len() as u64, [p50(a), p50(b), p50(c)]));
    }
    Ok(out)
}

pub fn scaling(sizes: &[u64], profile: &EngineProfile, compile_runs: usize, aot_runs: usize, work: &Path) -> Result<Vec<ScalingRow>> {
    let tier = Tier::best_for_host().expect("baseline tier fits");
    let mut rows = Vec::new();
    for &size in sizes {
        let wasm = component_of_size(size)?;
        eprintln!("scaling: {} bytes", wasm.len());
        let mut jit = Vec::new();
        let mut expect = None;
        for _ in 0..compile_runs {
            let t = Instant::now();
            let engine = runtime_engine(profile)?;
            let c = Component::new(&engine, &wasm).w()?;
            let r = start(&engine, &c)?;
            jit.push(t.elapsed());
            expect = Some(r);
        }
        let cwasm = limes_build::aot::engine_for(&tier, profile)?.precompile_component(&wasm).w()?;
        let path = work.join(format!("synth-{size}.cwasm"));
        std::fs::write(&path, &cwasm)?;
        let engine = runtime_engine(profile)?;
        let mut aot: Vec<Duration> = Vec::new();
        for _ in 0..aot_runs {
            let t = Instant::now();
            // SAFETY: we just compiled this file ourselves.
            let c = unsafe { Component::deserialize_file(&engine, &path) }.w()?;
            let r = start(&engine, &c)?;
            aot.push(t.elapsed());
            anyhow::ensure!(Some(r) == expect, "AOT and JIT disagree");
        }
        rows.push(ScalingRow { size_bytes: wasm.len() as u64, compile_at_load: Stats::of(&jit, "compile at load")?, aot: Stats::of(&aot, "AOT cold start")? });
    }
    Ok(rows)
}
