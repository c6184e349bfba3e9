//! Image pipeline, the image workload of the Limes study: decode a JPEG,
//! blur (sigma 3.0), brighten (+2), contrast (1.5), grayscale, encode.
//!
//! The image arrives as the request body, or, when the request has a `file`
//! metadata entry (or a `file=NAME` body), is read from the preopened
//! directory `/images`. Output is JPEG (quality 90) unless `format=png`.
use limes_sdk::{Error, Request, Response};
use std::io::Cursor;

/// Where the host preopens the image directory (see `[package.metadata.limes]`).
pub const IMAGES_DIR: &str = "/images";
pub const JPEG_QUALITY: u8 = 90;

/// Run the pipeline on encoded image bytes.
pub fn process(input: &[u8], png: bool) -> Result<Vec<u8>, Error> {
    let mut reader = image::ImageReader::new(Cursor::new(input)).with_guessed_format().map_err(Error::internal)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(8192);
    limits.max_image_height = Some(8192);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Error::bad_request(format!("cannot decode image: {e}")))?;
    let out = img.blur(3.0).brighten(2).adjust_contrast(1.5).grayscale();
    let mut buf = Vec::new();
    if png {
        out.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png).map_err(Error::internal)?;
    } else {
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY);
        out.write_with_encoder(enc).map_err(Error::internal)?;
    }
    Ok(buf)
}

fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.meta(key)
}

pub fn handle(req: Request) -> Result<Response, Error> {
    // A small text body may name the file instead of metadata (CLI friendliness).
    let body_file = std::str::from_utf8(&req.body).ok().filter(|s| s.len() < 256).and_then(|s| s.trim().strip_prefix("file=")).map(str::to_string);
    let png = param(&req, "format") == Some("png");
    let input = match param(&req, "file").map(str::to_string).or(body_file) {
        Some(name) => {
            let safe = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
            if !safe {
                return Err(Error::bad_request(format!("file {name:?} must be a plain file name")));
            }
            let path = format!("{IMAGES_DIR}/{name}");
            std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::not_found(format!("{path} does not exist")),
                _ => Error::internal(format!("reading {path}: {e}")),
            })?
        }
        None if req.body.is_empty() => return Err(Error::bad_request("send a JPEG body or name a file")),
        None => req.body,
    };
    let out = process(&input, png)?;
    Ok(Response::new(out).with_content_type(if png { "image/png" } else { "image/jpeg" }))
}

limes_sdk::export!(handle);
