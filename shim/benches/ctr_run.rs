//! `ctr run` of the signed no-op bundle through `containerd-shim-limes-v1`
//! (image already pulled), beside the baseline measured in the same run on
//! the same containerd: a static native no-op container under runc. Each
//! run is checked for its answer. Writes `containerd.md` and
//! `containerd.json` to `--out` (default `bench-results`).
//!
//! Run with `scripts/bench-containerd.sh` (optimised build, needs root).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/containerd.rs"]
mod node;

use common::*;
use node::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn percentile(v: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A static native no-op that prints its first argument, as an image.
fn import_native_noop(node: &Node) -> String {
    let name = "limes.test/native-noop:1";
    import_static_c(node, "default", name, "noop", "#include <stdio.h>\nint main(int c, char **v) { if (c > 1) fputs(v[1], stdout); return 0; }\n");
    name.into()
}

fn main() {
    let mut out = PathBuf::from("bench-results");
    let mut runs = 30;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().expect("--out DIR").into(),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("a number"),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let node = Node::start();
    let limes_image = node.push(&pack("noop"), &node.key, "0.1.0");
    ok(node.ctr().args(["images", "pull", "--plain-http", &limes_image]));
    let native_image = import_native_noop(&node);

    let time = |runtime: Option<&str>, image: &str, id: String, args: &[&str]| -> Duration {
        let mut c = node.ctr();
        c.args(["run", "--rm"]);
        if let Some(r) = runtime {
            c.args(["--runtime", r]);
        }
        c.arg(image).arg(&id).args(args);
        let t = Instant::now();
        let o = c.output().unwrap();
        let took = t.elapsed();
        assert!(o.status.success(), "{id}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "hello", "{id}");
        took
    };
    let (mut limes, mut native) = (Vec::new(), Vec::new());
    // Alternate the two so drift on a shared machine hits both alike; the
    // first rounds warm caches and are not counted.
    for i in 0..runs + 3 {
        let l = time(Some(RUNTIME), &limes_image, format!("limes-{i}"), &["limes", "run", "--data", "hello"]);
        let n = time(None, &native_image, format!("native-{i}"), &["/noop", "hello"]);
        if i >= 3 {
            limes.push(l);
            native.push(n);
        }
    }
    node.assert_all_stopped();

    let row = |name: &str, v: &[Duration]| serde_json::json!({"method": name, "n": v.len(), "p50_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9), "min_ms": percentile(v, 0.0)});
    let rows = vec![row("limes shim (signed no-op bundle)", &limes), row("runc (static native no-op, baseline)", &native)];
    let mut md = String::from("# `ctr run` of a no-op: limes shim vs runc\n\n");
    md += "containerd 1.7.24 (Debian 13 package), native snapshotter, image already pulled; wall time of `ctr run --rm` \
           from start to exit, including task create/start/delete. Same containerd, same run, alternating.\n\n";
    md += "| method | n | p50 ms | p90 ms | min ms |\n|---|---|---|---|---|\n";
    for r in &rows {
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r["method"].as_str().unwrap(),
            r["n"],
            r["p50_ms"].as_f64().unwrap(),
            r["p90_ms"].as_f64().unwrap(),
            r["min_ms"].as_f64().unwrap()
        );
    }
    md += &format!("\nAim: limes p50 <= 300 ms. Ratio limes/runc p50: {:.2}x.\n", percentile(&limes, 0.5) / percentile(&native, 0.5));
    print!("{md}");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("containerd.md"), &md).unwrap();
    std::fs::write(out.join("containerd.json"), serde_json::to_string_pretty(&serde_json::json!({"rows": rows})).unwrap()).unwrap();
}
