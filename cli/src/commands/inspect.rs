use crate::ui::Ui;
use clap::Args;
use limes_bundle::archive::{read_bundle, BundleLimits, Discard, SignaturePolicy};
use std::path::PathBuf;

/// Show a bundle's manifest: function, world, tiers, sizes, signer.
///
/// The bundle's digests and sizes are checked; the signature is reported
/// but not trusted (use `verify --key` for that).
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack inspect hello-0.1.0.limes\n  limes-pack inspect hello-0.1.0.limes --json")]
pub struct InspectCommand {
    /// The bundle to inspect.
    bundle: PathBuf,
}

impl InspectCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let v = read_bundle(&self.bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut Discard)
            .map_err(|e| super::bundle_context(e, &self.bundle, "is damaged"))?;
        let m = &v.manifest;
        let by_arch = m.tiers_by_arch();
        let tiers_json: serde_json::Map<String, serde_json::Value> =
            by_arch.iter().map(|(g, v)| (g.clone(), v.iter().map(|a| serde_json::Value::from(a.tier.clone())).collect())).collect();
        let json = serde_json::json!({
            "tiers_by_arch": tiers_json,
            "ok": true,
            "bundle": self.bundle,
            "compressed_size": v.compressed_size,
            "signer_key_id": v.signer.map(|k| k.to_string()),
            "trusted_comment": v.trusted_comment,
            "manifest": m,
        });
        // Every manifest string is the publisher's (or an attacker's, for an
        // unsigned bundle): escape control characters so no text can move the
        // cursor or forge lines on the terminal.
        let t = |s: &str| -> String { s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect() };
        let short = |s: &str| -> String { t(s.get(..16).unwrap_or(s)) };
        ui.result(json, || {
            let mut s = format!("{} {}", t(&m.function.name), t(&m.function.version));
            if let Some(d) = &m.function.description {
                s += &format!(" - {}", t(d));
            }
            s += &format!("\n  bundle     {} bytes, schema {}\n", v.compressed_size, m.schema);
            s += &format!("  signer     {}\n", v.signer.map(|k| format!("key {k} (not checked; use verify --key)")).unwrap_or_else(|| "unsigned".into()));
            s += &format!("  world      {:?}: {}\n", m.world.kind, t(&m.world.export));
            s += &format!("  imports    {}\n", t(&m.world.imports.join(", ")));
            s += &format!("  engine     wasmtime {}, profile {}\n", t(&m.engine.wasmtime), t(&m.engine.profile.name));
            s += &format!(
                "  limits     memory {} MiB, timeout {} ms, input {} MiB\n",
                m.limits.memory_bytes >> 20,
                m.limits.timeout_ms,
                m.limits.max_input_bytes >> 20
            );
            for p in &m.preopens {
                s += &format!("  preopen    {} -> {}{}\n", t(&p.name), t(&p.guest_path), if p.writable { " (writable)" } else { "" });
            }
            // Tiers grouped by architecture: a device runs one group.
            for (arch, tiers) in &by_arch {
                for (i, a) in tiers.iter().enumerate() {
                    let size = m.file(&a.path).map(|f| f.size).unwrap_or(0);
                    let label = if i == 0 { format!("tier {arch}") } else { String::new() };
                    s += &format!("  {:<16} {:<12} {:>9} bytes  {}\n", label, t(&a.tier), size, t(&a.path));
                }
            }
            if let Some(vm) = &m.microvm {
                s += &format!(
                    "  microvm    {} image ({}), {} vCPU, {} MiB, boot args {:?}\n",
                    vm.kind.name(),
                    t(&vm.target),
                    vm.vcpus,
                    vm.memory_mib,
                    vm.boot_args
                );
            }
            if let Some(why) = m.why_no_microvm() {
                s += &format!("  microvm    none ({why})\n");
            }
            if !m.allowed_outbound_hosts.is_empty() {
                s += &format!("  outbound   {}\n", m.allowed_outbound_hosts.iter().map(|h| t(h)).collect::<Vec<_>>().join(", "));
            }
            for f in &m.files {
                s += &format!("  file       {:<24} {:>9} bytes  sha256 {}\n", t(&f.path), f.size, short(&f.sha256));
            }
            s += &format!(
                "  provenance source {} rustc {:?} git {}\n",
                short(&m.provenance.source_digest),
                m.provenance.rustc,
                t(m.provenance.git_commit.as_deref().unwrap_or("none"))
            );
            if let Some(p) = &m.provenance.prebuilt {
                s += &format!("  prebuilt   component {} sha256 {}\n", t(&p.file), short(&p.sha256));
            }
            s
        });
        Ok(())
    }
}
