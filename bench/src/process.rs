//! Whole processes: `limes run` (the static device build and the glibc
//! build of the same loader) against the function's native executable,
//! each answering the same request, in turn, so all meet the machine's slow
//! spells alike. `--only-process` runs just these rows (#27's one-shot aim).

use crate::{ProcessRequest, Row, Stats, RUN_GLIBC, RUN_STATIC};
use anyhow::Result;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Row name of the loader's own floor: `limes --version` starts the same
/// executable, parses the command line and exits, with no store, engine or
/// function: what a one-shot run costs before it does any work.
pub const LOADER_FLOOR: &str = "process (limes --version)";

/// The executables one workload's rows compare.
pub struct Executables<'a> {
    /// The function's native build (none for a variant it cannot answer).
    pub native: Option<&'a Path>,
    pub device: &'a Path,
    pub glibc: &'a Path,
}

/// `runs` rounds of every executable in `exes` answering `request` from
/// `store`; the no-op's rounds also start the device loader's floor.
pub fn rows(workload: &str, exes: &Executables, store: &Path, request: &ProcessRequest, runs: usize) -> Result<Vec<Row>> {
    let floor = workload == "noop";
    let (mut native, mut device, mut glibc, mut version) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        if let Some(exe) = exes.native {
            native.push(request.native(exe)?);
        }
        device.push(request.limes_run(exes.device, store)?);
        glibc.push(request.limes_run(exes.glibc, store)?);
        if floor {
            version.push(loader_floor(exes.device)?);
        }
    }
    let mut out = Vec::new();
    for (method, samples) in [(RUN_STATIC, device), (RUN_GLIBC, glibc), ("native-process", native), (LOADER_FLOOR, version)] {
        if !samples.is_empty() {
            out.push(Row { workload: workload.into(), method: method.into(), phase: "total".into(), stats: Stats::of(&samples, method)? });
        }
    }
    Ok(out)
}

/// One `exe --version`, start to exit.
fn loader_floor(exe: &Path) -> Result<Duration> {
    let (took, status) = crate::time(|| Command::new(exe).arg("--version").stdout(Stdio::null()).status());
    anyhow::ensure!(status?.success(), "{} --version failed", exe.display());
    Ok(took)
}

/// `--only-process`: build and install the reference packs (no microVM
/// image), then their whole-process rows.
pub fn only(store: &limes::Store, keys: &limes_bundle::TrustedKeys, key: &limes_bundle::keys::SecretKey, work: &Path, quick: bool) -> Result<Vec<Row>> {
    let device = crate::device_loader()?;
    let glibc = crate::sibling("limes")?;
    let natives = crate::native_builds(None)?;
    let jpeg = std::fs::read(crate::repo().join("packs/image/testdata/input-1024x768.jpg"))?;
    let mut rows = Vec::new();
    // The requests of the full benchmark's whole-process rows.
    for (pack, workload, body, runs) in
        [("noop", "noop", b"hello".to_vec(), 200), ("mandelbrot", "mandelbrot", Vec::new(), 30), ("image", "image (body)", jpeg, 30)]
    {
        eprintln!("process: {pack}");
        let opts = limes_build::BuildOptions { microvm: false, ..crate::signed_build_options(crate::repo().join("packs").join(pack), work.join("out"), key) };
        let out = limes_build::build(&opts, &limes_build::pipeline::NoProgress)?;
        let f = store.install(&out.bundle, keys, Default::default())?;
        let req = limes_sdk::Request::new(body);
        let request = ProcessRequest::new(&f.manifest.function.name, &req, &[], work.join(format!("{pack}.body")))?;
        let exes = Executables { native: Some(&natives[pack]), device: &device, glibc: &glibc };
        rows.extend(self::rows(workload, &exes, store.root(), &request, if quick { 3 } else { runs })?);
    }
    Ok(rows)
}
