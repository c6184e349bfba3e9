//! Guest SDK for limes functions: the author-facing types ([`Request`], [`Response`], [`Error`]),
//! [`export!`] binding one plain Rust function to `limes:function/handler@0.1.0`, and the frame
//! protocol ([`frame`], [`native`]) the same function speaks as a native microVM executable.
//! Must not touch: anything host-side (Wasmtime, bundles, signing); it is compiled into every
//! function, so it has no dependencies on native targets and only `wit-bindgen` on wasm.
//!
//! ```ignore
//! use limes_sdk::{Request, Response, Error};
//!
//! fn handle(req: Request) -> Result<Response, Error> {
//!     Ok(Response::new(req.body))
//! }
//! limes_sdk::export!(handle);
//! ```

pub mod frame;
#[cfg(not(target_family = "wasm"))]
pub mod native;

/// One request, as the host delivers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// Ordered key/value pairs; keys are lower-case and may repeat.
    pub metadata: Vec<(String, String)>,
}

impl Request {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Request { body: body.into(), ..Default::default() }
    }

    /// First value of metadata key `key` (compared case-insensitively).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    pub fn with_meta(mut self, key: &str, value: &str) -> Self {
        self.metadata.push((key.to_ascii_lowercase(), value.to_string()));
        self
    }
}

/// A successful answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

impl Response {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Response { body: body.into(), content_type: None }
    }

    pub fn with_content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_string());
        self
    }
}

/// Why a request failed; mirrors the WIT `error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    BadRequest(String),
    NotFound(String),
    Internal(String),
}

impl Error {
    pub fn bad_request(msg: impl std::fmt::Display) -> Self {
        Error::BadRequest(msg.to_string())
    }
    pub fn not_found(msg: impl std::fmt::Display) -> Self {
        Error::NotFound(msg.to_string())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
    pub fn message(&self) -> &str {
        match self {
            Error::BadRequest(m) | Error::NotFound(m) | Error::Internal(m) => m,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad-request",
            Error::NotFound(_) => "not-found",
            Error::Internal(_) => "internal",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for Error {}

/// The signature every limes function has.
pub type Handler = fn(Request) -> Result<Response, Error>;

/// Bind `handler` (a `fn(Request) -> Result<Response, Error>`) to the limes
/// world.
///
/// On `wasm32-wasip2` this exports `limes:function/handler@0.1.0`. On native
/// targets it defines `__limes_handler`, which `limes-pack` wraps into the
/// frame-protocol executable (see [`native::main`]).
#[macro_export]
macro_rules! export {
    ($handler:path) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct __LimesFunction;
            impl $crate::__private::Guest for __LimesFunction {
                fn handle(req: $crate::__private::WitRequest) -> ::core::result::Result<$crate::__private::WitResponse, $crate::__private::WitError> {
                    $crate::__private::dispatch(req, $handler)
                }
            }
    $crate::__private::export_function!(__LimesFunction with_types_in $crate::__private::bindings);
        };

        /// The function's handler, for the native frame runner.
        #[doc(hidden)]
        #[cfg(not(target_family = "wasm"))]
        pub fn __limes_handler(req: $crate::Request) -> ::core::result::Result<$crate::Response, $crate::Error> {
            $handler(req)
        }

        /// Entry point of the native frame-protocol executable.
        #[doc(hidden)]
        #[cfg(not(target_family = "wasm"))]
        pub fn __limes_native_main() -> ! {
            $crate::native::main(__limes_handler)
        }

        /// What the native executable installs as its allocator (the SDK,
        /// reached through the function crate).
        #[doc(hidden)]
        #[cfg(all(not(target_family = "wasm"), any(target_os = "linux", target_os = "hermit")))]
        pub mod __limes_native {
            pub use $crate::native::LimitedAlloc;
        }
    };
}

#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod __private {
    pub mod bindings {
        wit_bindgen::generate!({
            world: "function",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "__limes_export_function",
            default_bindings_module: "limes_sdk::__private::bindings",
        });
    }

    pub use bindings::__limes_export_function as export_function;
    pub use bindings::exports::limes::function::handler::Guest;
    pub use bindings::limes::function::types::{Error as WitError, Request as WitRequest, Response as WitResponse};

    pub fn dispatch(req: WitRequest, handler: crate::Handler) -> Result<WitResponse, WitError> {
        let req = crate::Request { body: req.body, content_type: req.content_type, metadata: req.metadata };
        match handler(req) {
            Ok(r) => Ok(WitResponse { body: r.body, content_type: r.content_type }),
            Err(crate::Error::BadRequest(m)) => Err(WitError::BadRequest(m)),
            Err(crate::Error::NotFound(m)) => Err(WitError::NotFound(m)),
            Err(crate::Error::Internal(m)) => Err(WitError::Internal(m)),
        }
    }
}
