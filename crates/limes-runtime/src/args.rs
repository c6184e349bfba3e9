//! What `limes` and `limes-pack` share on the command line: values parsed
//! into typed values by clap (`value_parser = ...`), so a malformed one is a
//! usage error (exit 2) before anything runs; and one output policy: logs
//! set up once ([`init_logging`]), one compact JSON document per answer
//! ([`print_json`]), errors in one shape ([`report_error`]).

use std::path::PathBuf;

/// `--dir NAME=PATH`: bind the declared preopen NAME to a host directory.
pub fn parse_dir(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

/// `--meta KEY=VALUE`: request metadata; keys are lower-cased (as HTTP
/// header names are when `limes serve` passes them on).
pub fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_ascii_lowercase(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The request flags of `limes run` and `limes-pack run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RequestArgs {
    /// Request body given inline.
    #[arg(long, conflicts_with = "input", value_name = "TEXT")]
    pub data: Option<String>,
    /// Request body from FILE, or `-` for stdin [default: empty body].
    #[arg(long, short, value_name = "FILE|-")]
    pub input: Option<String>,
    /// Request metadata `key=value` (repeatable).
    #[arg(long, short, value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Request content type.
    #[arg(long, value_name = "MIME")]
    pub content_type: Option<String>,
    /// HTTP method, for a wasi:http function [default: POST with a body, else GET].
    #[arg(long, short = 'X', value_name = "METHOD")]
    pub method: Option<String>,
    /// Path and query the wasi:http function sees [default: /].
    #[arg(long = "path", id = "http_path", value_name = "PATH", value_parser = parse_path)]
    pub path: Option<String>,
    /// A request header `NAME: VALUE` for a wasi:http function (repeatable).
    #[arg(long, short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub header: Vec<(String, String)>,
}

/// `--path`: an origin-form request target.
pub fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(s.to_string())
    } else {
        Err(format!("expected a path starting with `/` (e.g. /items?id=3), got {s:?}"))
    }
}

/// `--header NAME: VALUE`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) => {
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        }
        _ => Err(format!("expected NAME: VALUE, got {s:?}")),
    }
}

impl RequestArgs {
    /// The request these flags describe.
    pub fn request(&self) -> anyhow::Result<limes_sdk::Request> {
        let mut req = request(self.data.as_deref(), self.input.as_deref(), self.content_type.as_deref(), &self.meta)?;
        // The request line of a wasi:http function (see `wasi_http`); a
        // limes function sees none of it unless asked.
        if let Some(m) = &self.method {
            req.metadata.push((crate::wasi_http::METHOD.into(), m.to_ascii_uppercase()));
        }
        if let Some(p) = &self.path {
            req.metadata.push((crate::wasi_http::PATH.into(), p.clone()));
        }
        req.metadata.extend(self.header.iter().cloned());
        Ok(req)
    }
}

/// The request a `run` command sends: the body from `--data`, else from
/// `--input FILE` (`-` for stdin), else empty; content type and metadata
/// as given.
pub fn request(data: Option<&str>, input: Option<&str>, content_type: Option<&str>, meta: &[(String, String)]) -> anyhow::Result<limes_sdk::Request> {
    use anyhow::Context;
    use std::io::Read;
    let body = match (input, data) {
        (_, Some(d)) => d.as_bytes().to_vec(),
        (Some("-"), _) => {
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v).context("reading stdin")?;
            v
        }
        (Some(f), _) => std::fs::read(f).with_context(|| format!("reading input {f}"))?,
        (None, None) => Vec::new(),
    };
    let mut req = limes_sdk::Request::new(body);
    req.content_type = content_type.map(String::from);
    req.metadata.extend(meta.iter().cloned());
    Ok(req)
}

/// Logs on stderr through `tracing`: warnings by default, `-v` info, `-vv`
/// debug, `-vvv` trace, `--quiet` errors only; `RUST_LOG` overrides. Colour
/// only on a terminal.
pub fn init_logging(verbose: u8, quiet: bool) {
    init_logging_with(verbose, quiet, &[])
}

/// [`init_logging`] with extra `target=level` directives on top of the
/// level (`limes serve --access-log` adds `limes::access=info`); `RUST_LOG`
/// still overrides everything.
pub fn init_logging_with(verbose: u8, quiet: bool, extra: &[&str]) {
    let level = if quiet { "error" } else { ["warn", "info", "debug", "trace"][verbose.min(3) as usize] };
    let directives = std::iter::once(level).chain(extra.iter().copied()).collect::<Vec<_>>().join(",");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| directives.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// The `--json` document of a function's answer, the same for `limes run`
/// and `limes-pack run` (documented in docs/cli-output.md): the body
/// always as base64, also as text when it is UTF-8; a wasi:http function's
/// status and headers; `ok` false for an error answer or a 5xx status.
pub fn answer_json(
    result: &Result<limes_sdk::Response, limes_sdk::Error>,
    http: Option<&crate::wasi_http::HttpHead>,
    timings: serde_json::Value,
) -> serde_json::Value {
    use base64::Engine as _;
    match result {
        Ok(resp) => {
            let failed = http.is_some_and(|h| h.status >= 500);
            let mut v = serde_json::json!({"ok": !failed, "content_type": resp.content_type,
                "body_len": resp.body.len(), "body_base64": base64::engine::general_purpose::STANDARD.encode(&resp.body),
                "body_utf8": std::str::from_utf8(&resp.body).ok(),
                "timings": timings});
            if let Some(h) = http {
                v["status"] = h.status.into();
                v["headers"] = h.headers.iter().map(|(k, v)| serde_json::json!([k, v])).collect();
            }
            v
        }
        Err(e) => serde_json::json!({"ok": false, "kind": "function-error", "error": e.to_string(),
            "function_error": {"kind": e.kind(), "message": e.message()}, "timings": timings}),
    }
}

/// A `--json` answer: one JSON document on one line of stdout.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

/// A failed command: with `--json`, `{"ok": false, "kind", "error"}` on
/// stdout; always `error: ...` (with its causes) on stderr.
pub fn report_error(json: bool, kind: &str, e: &anyhow::Error) {
    let (stdout, stderr) = error_lines(json, kind, &format!("{e:#}"));
    print!("{stdout}");
    eprint!("{stderr}");
}

/// The lines [`report_error`] prints, as text: for stdout (empty without
/// `--json`) and for stderr. A one-shot run's watchdog prepares them before
/// the call, so a timeout reads like any other failure.
pub fn error_lines(json: bool, kind: &str, message: &str) -> (String, String) {
    let stdout = if json { format!("{}\n", serde_json::json!({"ok": false, "kind": kind, "error": message})) } else { String::new() };
    (stdout, format!("error: {message}\n"))
}

/// Text a guest or client controls, made safe for one log field: control
/// characters (newline, carriage return, ANSI escape, ...) and quotes come
/// out escaped, so it can neither end a log line nor redraw one.
pub fn escape_log(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() || c == '"' || c == '\\' { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}
