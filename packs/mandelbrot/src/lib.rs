//! Mandelbrot set renderer, the compute workload of the Limes study.
//!
//! Defaults: 800x800 pixels, 256 iterations, f32 arithmetic, region
//! x in [-2, 1], y in [-1.5, 1.5], 8-bit grayscale. Every parameter can be
//! overridden through request metadata or a `key=value&key=value` body:
//! `width`, `height`, `iterations`, `x-min`, `x-max`, `y-min`, `y-max`, and
//! `output` = `png` (default), `checksum` (a JSON summary) or `raw` (pixels).
use limes_sdk::{Error, Request, Response};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub width: u32,
    pub height: u32,
    pub iterations: u32,
    pub x_min: f32,
    pub x_max: f32,
    pub y_min: f32,
    pub y_max: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { width: 800, height: 800, iterations: 256, x_min: -2.0, x_max: 1.0, y_min: -1.5, y_max: 1.5 }
    }
}

/// Largest image accepted (keeps one request's memory bounded).
pub const MAX_PIXELS: u64 = 16 << 20;

/// Render the set: one byte per pixel, row-major. Points that never escape
/// are 0; others are scaled by their escape iteration to 1..=255.
pub fn render(p: &Params) -> Vec<u8> {
    let mut out = Vec::with_capacity((p.width * p.height) as usize);
    let dx = (p.x_max - p.x_min) / p.width as f32;
    let dy = (p.y_max - p.y_min) / p.height as f32;
    for py in 0..p.height {
        let cy = p.y_min + py as f32 * dy;
        for px in 0..p.width {
            let cx = p.x_min + px as f32 * dx;
            let (mut x, mut y, mut i) = (0.0f32, 0.0f32, 0u32);
            while i < p.iterations {
                let x2 = x * x;
                let y2 = y * y;
                if x2 + y2 > 4.0 {
                    break;
                }
                y = 2.0 * x * y + cy;
                x = x2 - y2 + cx;
                i += 1;
            }
            out.push(if i >= p.iterations { 0 } else { (1 + i * 254 / p.iterations) as u8 });
        }
    }
    out
}

/// FNV-1a, 64 bit: a dependency-free checksum both builds compute alike.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn params_from(req: &Request) -> Result<(Params, String), Error> {
    let mut p = Params::default();
    let mut output = "png".to_string();
    let body = std::str::from_utf8(&req.body).map_err(|_| Error::bad_request("body must be key=value text"))?;
    let from_body = body
        .split(['&', '\n', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').ok_or_else(|| Error::bad_request(format!("expected key=value, got {kv:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let pairs = req.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(from_body);
    for (k, v) in pairs {
        let num = |what: &str| Error::bad_request(format!("{what} must be a number, got {v:?}"));
        match k {
            "width" => p.width = v.parse().map_err(|_| num(k))?,
            "height" => p.height = v.parse().map_err(|_| num(k))?,
            "iterations" => p.iterations = v.parse().map_err(|_| num(k))?,
            "x-min" => p.x_min = v.parse().map_err(|_| num(k))?,
            "x-max" => p.x_max = v.parse().map_err(|_| num(k))?,
            "y-min" => p.y_min = v.parse().map_err(|_| num(k))?,
            "y-max" => p.y_max = v.parse().map_err(|_| num(k))?,
            "output" => output = v.to_string(),
            _ => {} // Unknown metadata (e.g. HTTP headers) is not ours.
        }
    }
    if p.width == 0 || p.height == 0 || p.iterations == 0 {
        return Err(Error::bad_request("width, height and iterations must be positive"));
    }
    if p.width as u64 * p.height as u64 > MAX_PIXELS {
        return Err(Error::bad_request(format!("at most {MAX_PIXELS} pixels")));
    }
    // Written as "ordered" so that NaN bounds fail it (`>=` would let them by).
    let ordered = p.x_min < p.x_max && p.y_min < p.y_max;
    if !ordered || ![p.x_min, p.x_max, p.y_min, p.y_max].iter().all(|f| f.is_finite()) {
        return Err(Error::bad_request("region must be finite with min < max"));
    }
    Ok((p, output))
}

pub fn handle(req: Request) -> Result<Response, Error> {
    let (p, output) = params_from(&req)?;
    let pixels = render(&p);
    match output.as_str() {
        "raw" => Ok(Response::new(pixels).with_content_type("application/octet-stream")),
        "checksum" => {
            let sum: u64 = pixels.iter().map(|&b| b as u64).sum();
            let json = format!(
                "{{\"width\":{},\"height\":{},\"iterations\":{},\"fnv1a64\":\"{:016x}\",\"sum\":{}}}\n",
                p.width,
                p.height,
                p.iterations,
                fnv1a64(&pixels),
                sum
            );
            Ok(Response::new(json).with_content_type("application/json"))
        }
        "png" => {
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png).write_image(&pixels, p.width, p.height, image::ExtendedColorType::L8).map_err(Error::internal)?;
            Ok(Response::new(png).with_content_type("image/png"))
        }
        other => Err(Error::bad_request(format!("output must be png, checksum or raw, not {other:?}"))),
    }
}

use image::ImageEncoder as _;

limes_sdk::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pixels() {
        let p = Params { width: 3, height: 3, iterations: 256, x_min: -2.0, x_max: 1.0, y_min: -1.5, y_max: 1.5 };
        let img = render(&p);
        // (-2,-1.5): |c|^2 = 6.25 > 4, escapes after one step -> 1 + 1*254/256 = 1.
        assert_eq!(img[0], 1);
        // Pixel (1,1) is c = -1 - 0.5i, which escapes after a few steps.
        assert!(img[4] > 1 && img[4] < 20, "{}", img[4]);
        // c = -0.5i and c = +0.5i (pixels (2,1) and (2,2)) are in the set.
        assert_eq!(img[5], 0);
        assert_eq!(img[8], 0);
    }

    #[test]
    fn parameters_and_errors() {
        let r = handle(Request::new("width=4&height=2&output=raw")).unwrap();
        assert_eq!(r.body.len(), 8);
        let r = handle(Request::new("").with_meta("output", "checksum").with_meta("width", "10").with_meta("height", "10")).unwrap();
        assert!(String::from_utf8(r.body).unwrap().starts_with("{\"width\":10,\"height\":10,"));
        assert!(matches!(handle(Request::new("width=abc")), Err(Error::BadRequest(_))));
        assert!(matches!(handle(Request::new("output=gif")), Err(Error::BadRequest(_))));
        assert!(matches!(handle(Request::new("width=100000&height=100000")), Err(Error::BadRequest(_))));
        let png = handle(Request::new("width=8&height=8")).unwrap();
        assert_eq!(&png.body[..4], b"\x89PNG");
    }
}
