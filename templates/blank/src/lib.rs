//! {{name}}: a limes function.
use limes_sdk::{Error, Request, Response};

/// Called once per request, on a fresh instance.
pub fn handle(req: Request) -> Result<Response, Error> {
    let name = std::str::from_utf8(&req.body).map_err(Error::bad_request)?.trim();
    let name = if name.is_empty() { "world" } else { name };
    Ok(Response::new(format!("hello, {name}\n")).with_content_type("text/plain"))
}

limes_sdk::export!(handle);
