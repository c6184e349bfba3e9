//! Build side of `limes-pack`: find the crate ([`project`]), run cargo ([`compile`]), check the
//! component ([`validate`]), precompile tiers ([`aot`]), build the microVM image ([`microvm`] for Linux, [`hermit`] for
//! the Hermit unikernel),
//! assemble and sign the bundle ([`pipeline`]), and write `new` templates ([`templates`]).
//! Must not touch: device-side concerns (install, run, serve: the `limes` loader) or the bundle
//! format itself (`limes-bundle`, shared with the loader).

pub mod aot;
pub mod compile;
pub mod doctor;
pub mod hermit;
pub mod isolate;
pub mod microvm;
pub mod pipeline;
pub mod project;
pub mod shared;
pub mod templates;
pub mod validate;

pub use compile::CargoOptions;
pub use pipeline::{build, BuildOptions, BuildOutput, Progress};
pub use project::Project;
