//! `containerd-shim-limes-v1` on runwasi's `containerd-shim-wasm` (which owns the containerd
//! protocol, namespaces and cgroups): the node's trusted keys and store ([`node`]), image
//! layers back to bundle files and the container's `run`/`serve` command line ([`container`]).
//! Must not touch: verification and installation (the loader's store does both, as for
//! `limes pull`), Cranelift, anything a pod supplies as a source of trust.

pub mod container;
pub mod node;

use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::shim::{Shim, Version};

/// The exit codes of `limes run`, so a Job's status means the same.
pub use limes::error::{EXIT_FAULT, EXIT_FUNCTION_ERROR, EXIT_VERIFY};
pub const EXIT_USAGE: u8 = 2;

/// The OCI layer media types the shim reads: the signed manifest, its
/// signature, the component and the precompiled tiers (microVM images stay
/// in the content store, unread).
pub const LAYER_TYPES: &[&str] = &[limes_oci::MEDIA_MANIFEST, limes_oci::MEDIA_SIGNATURE, limes_oci::MEDIA_COMPONENT, limes_oci::MEDIA_CWASM];

#[cfg(test)]
mod tests {
    use limes_bundle::manifest::Role;

    #[test]
    fn reads_the_layers_of_the_roles_it_runs() {
        let read: Vec<&str> = [Role::Manifest, Role::Signature, Role::Component, Role::Aot].into_iter().map(limes_oci::media_type).collect();
        assert_eq!(super::LAYER_TYPES, read.as_slice());
    }
}

pub struct LimesShim;

#[derive(Default)]
pub struct LimesSandbox;

impl Shim for LimesShim {
    type Sandbox = LimesSandbox;

    fn name() -> &'static str {
        "limes"
    }

    fn version() -> Version {
        containerd_shim_wasm::shim::version!()
    }

    fn supported_layers_types() -> &'static [&'static str] {
        LAYER_TYPES
    }
}

impl Sandbox for LimesSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
        let layers = match ctx.entrypoint().source {
            Source::Oci(layers) => layers,
            Source::File(_) => {
                eprintln!("error: this image carries no limes bundle layers (push it with `limes-pack push`)");
                return Ok(1);
            }
        };
        let files: Vec<container::LayerFile<'_>> = layers
            .iter()
            .filter_map(|l| {
                let title = l.config.annotations().as_ref()?.get(limes_oci::TITLE)?;
                Some(container::LayerFile { title: title.as_str(), bytes: &l.layer })
            })
            .collect();
        Ok(container::run(ctx.args(), &files))
    }
}
