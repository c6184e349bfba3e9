//! Build-side library of `limes-pack`.
//!
//! Owns: locating a function crate and its `[package.metadata.limes]`
//! ([`project`]), running cargo for the component and the native build
//! ([`compile`]), validating a component against the limes world
//! ([`validate`]), AOT precompilation per CPU tier ([`aot`]), assembling and
//! signing bundles ([`pipeline`]), and `limes-pack new` templates
//! ([`templates`]).
//!
//! Must not touch: device-side concerns (installing, running, serving), which
//! live in the `limes` loader; the bundle format itself, which lives in
//! `limes-bundle` and is shared with the loader.

pub mod aot;
pub mod compile;
pub mod microvm;
pub mod pipeline;
pub mod project;
pub mod templates;
pub mod validate;

pub use compile::CargoOptions;
pub use pipeline::{build, BuildOptions, BuildOutput, Progress};
pub use project::Project;
