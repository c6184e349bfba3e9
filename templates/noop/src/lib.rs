//! The no-op function: answers with the request body, unchanged.
use limes_sdk::{Error, Request, Response};

pub fn handle(req: Request) -> Result<Response, Error> {
    let mut res = Response::new(req.body);
    res.content_type = req.content_type;
    Ok(res)
}

limes_sdk::export!(handle);
