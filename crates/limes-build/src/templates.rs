//! `limes-pack new`: a function crate from one of the templates in
//! `templates/`, embedded at compile time so the binary works anywhere.

use std::path::{Path, PathBuf};

struct Template {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "blank",
        files: &[
            ("Cargo.toml", include_str!("../../../templates/blank/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("../../../templates/blank/src/lib.rs")),
        ],
    },
    Template {
        name: "noop",
        files: &[
            ("Cargo.toml", include_str!("../../../templates/noop/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("../../../templates/noop/src/lib.rs")),
        ],
    },
    Template {
        name: "mandelbrot",
        files: &[
            ("Cargo.toml", include_str!("../../../templates/mandelbrot/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("../../../packs/mandelbrot/src/lib.rs")),
        ],
    },
    Template {
        name: "image",
        files: &[
            ("Cargo.toml", include_str!("../../../templates/image/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("../../../packs/image/src/lib.rs")),
        ],
    },
];

pub fn template_names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template {0:?}; choose one of: {1}")]
    Unknown(String, String),
    #[error("{0:?} is not a valid crate name (use letters, digits, `-` and `_`, starting with a letter)")]
    BadName(String),
    #[error("{0} already exists; choose another name or remove it")]
    Exists(PathBuf),
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// How the generated crate depends on the SDK.
pub fn default_sdk_dependency() -> String {
    // Built from a checkout: point at the SDK in that checkout. A packaged
    // limes-pack would use the published crate instead.
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../limes-sdk");
    match in_tree.canonicalize() {
        Ok(p) => format!("{{ path = {:?} }}", p.display().to_string()),
        Err(_) => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
    }
}

/// Create crate `name` in `parent/name` from template `template`.
/// `sdk` is the dependency spec for `limes-sdk` (TOML value).
pub fn generate(parent: &Path, name: &str, template: &str, sdk: &str) -> Result<PathBuf, TemplateError> {
    let t = TEMPLATES
        .iter()
        .find(|t| t.name == template)
        .ok_or_else(|| TemplateError::Unknown(template.into(), template_names().join(", ")))?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(TemplateError::BadName(name.into()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(TemplateError::Exists(dir));
    }
    // Build in a sibling temp dir and rename: a failure leaves nothing behind.
    let tmp = tempfile::Builder::new()
        .prefix(".limes-new-")
        .tempdir_in(parent)
        .map_err(|source| TemplateError::Io { path: parent.into(), source })?;
    for (rel, text) in t.files {
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{sdk}}", sdk);
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap())
            .and_then(|_| std::fs::write(&p, text))
            .map_err(|source| TemplateError::Io { path: p.clone(), source })?;
    }
    let _ = std::fs::write(tmp.path().join(".gitignore"), "/target\n");
    let kept = tmp.keep();
    std::fs::rename(&kept, &dir).map_err(|source| {
        let _ = std::fs::remove_dir_all(&kept);
        TemplateError::Io { path: dir.clone(), source }
    })?;
    Ok(dir)
}
