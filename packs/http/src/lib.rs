//! A standard HTTP function (`wasi:http/incoming-handler`, built on `wstd`):
//! it sees the whole request and answers with its own status and headers.
//!
//! - `POST /echo`: the body back, with the request's content type;
//! - `GET /fetch?url=URL`: fetches URL through `wasi:http/outgoing-handler`
//!   and answers with its status and body (502 and the error when the
//!   request failed: limes denies every origin the function's manifest
//!   does not list in `allowed-outbound-hosts`);
//! - anything else: 200 with the method, path and query it saw, as JSON.
//!
//! Only a WebAssembly build has anything in it: the export names of
//! `wasi:http` (`wasi:http/incoming-handler@0.2.x#handle`) are not valid in
//! an ELF linker's version script, so a host build of this `cdylib` (`cargo
//! build --workspace`, rust-analyzer) would fail to link with rust-lld.
#![cfg(target_arch = "wasm32")]

use wstd::http::{Body, Client, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    match req.uri().path() {
        "/echo" => echo(req).await,
        "/fetch" => fetch(req).await,
        _ => describe(req),
    }
}

async fn echo(req: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    let content_type = req.headers().get("content-type").cloned();
    let mut body = req.into_body();
    let bytes = body.contents().await?.to_vec();
    let mut out = Response::builder().status(StatusCode::OK);
    if let Some(ct) = content_type {
        out = out.header("content-type", ct);
    }
    Ok(out.body(Body::from(bytes))?)
}

async fn fetch(req: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    let query = req.uri().query().unwrap_or_default();
    let Some(url) = query.split('&').find_map(|kv| kv.strip_prefix("url=")) else {
        return Ok(Response::builder().status(StatusCode::BAD_REQUEST).body(Body::from("missing ?url=\n"))?);
    };
    let outbound = Request::get(url).body(Body::empty())?;
    match Client::new().send(outbound).await {
        Ok(resp) => {
            let status = resp.status();
            let mut body = resp.into_body();
            let bytes = body.contents().await?.to_vec();
            Ok(Response::builder().status(status).header("x-fetched", url).body(Body::from(bytes))?)
        }
        Err(e) => Ok(Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .header("content-type", "text/plain")
            .body(Body::from(format!("outbound request failed: {e:?}\n")))?),
    }
}

fn describe(req: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    let json = format!(
        "{{\"method\":\"{}\",\"path\":\"{}\",\"query\":\"{}\"}}\n",
        req.method(),
        req.uri().path().escape_default(),
        req.uri().query().unwrap_or_default().escape_default()
    );
    Ok(Response::builder().status(StatusCode::OK).header("content-type", "application/json").header("x-limes-example", "http").body(Body::from(json))?)
}
