//! The native frame protocol (documented in `wit/README.md`).
//!
//! A request frame is `"LMQ1" u32:len payload`, a response frame
//! `"LMR1" u32:len payload`, all integers little-endian. The same codec is
//! used by the function side (the native runner) and by hosts (the loader's
//! microVM backend, tests), so the two can never drift apart.

use crate::{Error, Request, Response};
use std::io::{self, Read, Write};

pub const REQUEST_MAGIC: &[u8; 4] = b"LMQ1";
pub const RESPONSE_MAGIC: &[u8; 4] = b"LMR1";
/// A request frame with this length asks the runner to exit.
pub const SHUTDOWN_LEN: u32 = u32::MAX;
/// Largest payload either side accepts.
pub const MAX_PAYLOAD: u32 = 256 << 20;
const NONE: u32 = u32::MAX;

/// Why a frame could not be decoded.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    BadMagic([u8; 4]),
    TooLarge(u32),
    Malformed(&'static str),
    /// More than the allowed bytes arrived outside frames.
    Noise(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "frame I/O: {e}"),
            FrameError::BadMagic(m) => write!(f, "bad frame magic {m:02x?}"),
            FrameError::TooLarge(n) => {
                write!(f, "frame payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit")
            }
            FrameError::Malformed(what) => write!(f, "malformed frame: {what}"),
            FrameError::Noise(n) => write!(f, "more than {n} bytes outside frames"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => put_bytes(out, s.as_bytes()),
        None => out.extend_from_slice(&NONE.to_le_bytes()),
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.0.split_first().ok_or(FrameError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        if self.0.len() < 4 {
            return Err(FrameError::Malformed("truncated"));
        }
        let (n, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_le_bytes(n.try_into().unwrap()))
    }
    fn bytes_of(&mut self, n: u32) -> Result<&'a [u8], FrameError> {
        let n = n as usize;
        if self.0.len() < n {
            return Err(FrameError::Malformed("length exceeds payload"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FrameError> {
        let n = self.u32()?;
        Ok(self.bytes_of(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, FrameError> {
        String::from_utf8(self.bytes()?).map_err(|_| FrameError::Malformed("string is not UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>, FrameError> {
        match self.u32()? {
            NONE => Ok(None),
            n => String::from_utf8(self.bytes_of(n)?.to_vec()).map(Some).map_err(|_| FrameError::Malformed("string is not UTF-8")),
        }
    }
    fn finish(&self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes"))
        }
    }
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut p = Vec::with_capacity(req.body.len() + 64);
    put_bytes(&mut p, &req.body);
    put_opt(&mut p, &req.content_type);
    p.extend_from_slice(&(req.metadata.len() as u32).to_le_bytes());
    for (k, v) in &req.metadata {
        put_bytes(&mut p, k.as_bytes());
        put_bytes(&mut p, v.as_bytes());
    }
    p
}

pub fn decode_request(payload: &[u8]) -> Result<Request, FrameError> {
    let mut c = Cursor(payload);
    let body = c.bytes()?;
    let content_type = c.opt_string()?;
    let n = c.u32()?;
    let mut metadata = Vec::new();
    for _ in 0..n {
        metadata.push((c.string()?, c.string()?));
    }
    c.finish()?;
    Ok(Request { body, content_type, metadata })
}

pub fn encode_response(res: &Result<Response, Error>) -> Vec<u8> {
    let mut p = Vec::new();
    match res {
        Ok(r) => {
            p.push(0);
            put_bytes(&mut p, &r.body);
            put_opt(&mut p, &r.content_type);
        }
        Err(e) => {
            p.push(match e {
                Error::BadRequest(_) => 1,
                Error::NotFound(_) => 2,
                Error::Internal(_) => 3,
            });
            put_bytes(&mut p, e.message().as_bytes());
        }
    }
    p
}

/// Status byte of a fault answer: the function did not answer at all
/// (a panic, or its memory limit), the native counterpart of a Wasm trap.
pub const FAULT_STATUS: u8 = 4;

/// A fault a native runner reports instead of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The function panicked (a Wasm trap on the other backend).
    Trap(String),
    /// An allocation would have exceeded the memory limit.
    MemoryLimit,
}

/// What a runner sent back: the function's answer, or a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Response(Result<Response, Error>),
    Fault(Fault),
}

/// Encode a fault answer (`4`, kind, message).
pub fn encode_fault(f: &Fault) -> Vec<u8> {
    let mut p = vec![FAULT_STATUS];
    match f {
        Fault::Trap(m) => {
            put_bytes(&mut p, b"trap");
            put_bytes(&mut p, m.as_bytes());
        }
        Fault::MemoryLimit => {
            put_bytes(&mut p, b"memory-limit");
            put_bytes(&mut p, b"");
        }
    }
    p
}

/// The complete response frame of [`Fault::MemoryLimit`], built without
/// allocating (it is written from inside the allocator).
pub const MEMORY_LIMIT_FRAME: [u8; 29] = {
    let mut f = [0u8; 29];
    let head = *b"LMR1";
    let mut i = 0;
    while i < 4 {
        f[i] = head[i];
        i += 1;
    }
    // payload: status, u32 len, "memory-limit", u32 len 0
    let payload_len: u32 = 1 + 4 + 12 + 4;
    let l = payload_len.to_le_bytes();
    f[4] = l[0];
    f[5] = l[1];
    f[6] = l[2];
    f[7] = l[3];
    f[8] = FAULT_STATUS;
    f[9] = 12;
    let kind = *b"memory-limit";
    let mut j = 0;
    while j < 12 {
        f[13 + j] = kind[j];
        j += 1;
    }
    f
};

/// Decode a response frame that may also carry a fault.
pub fn decode_answer(payload: &[u8]) -> Result<Answer, FrameError> {
    if payload.first() == Some(&FAULT_STATUS) {
        let mut c = Cursor(&payload[1..]);
        let kind = c.string()?;
        let message = c.string()?;
        c.finish()?;
        return match kind.as_str() {
            "trap" => Ok(Answer::Fault(Fault::Trap(message))),
            "memory-limit" => Ok(Answer::Fault(Fault::MemoryLimit)),
            _ => Err(FrameError::Malformed("unknown fault kind")),
        };
    }
    decode_response(payload).map(Answer::Response)
}

pub fn decode_response(payload: &[u8]) -> Result<Result<Response, Error>, FrameError> {
    let mut c = Cursor(payload);
    let res = match c.u8()? {
        0 => {
            let body = c.bytes()?;
            let content_type = c.opt_string()?;
            Ok(Response { body, content_type })
        }
        1 => Err(Error::BadRequest(c.string()?)),
        2 => Err(Error::NotFound(c.string()?)),
        3 => Err(Error::Internal(c.string()?)),
        _ => return Err(FrameError::Malformed("unknown response status")),
    };
    c.finish()?;
    Ok(res)
}

/// A frame's header: `magic`, then the payload length (u32, little-endian).
pub fn header(magic: &[u8; 4], len: usize) -> [u8; 8] {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(magic);
    head[4..].copy_from_slice(&(len as u32).to_le_bytes());
    head
}

/// The length a header announces, if it carries `magic`.
pub fn header_len(head: &[u8; 8], magic: &[u8; 4]) -> Result<u32, FrameError> {
    if &head[..4] != magic {
        return Err(FrameError::BadMagic(head[..4].try_into().unwrap()));
    }
    Ok(u32::from_le_bytes(head[4..].try_into().unwrap()))
}

/// Write one frame (`magic`, length, payload) and flush.
pub fn write_frame(w: &mut impl Write, magic: &[u8; 4], payload: &[u8]) -> io::Result<()> {
    w.write_all(&header(magic, payload.len()))?;
    w.write_all(payload)?;
    w.flush()
}

/// What [`read_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Payload(Vec<u8>),
    Shutdown,
    /// Clean end of stream before any byte of a new frame.
    Eof,
}

/// Read one frame with magic `magic`. Bytes before the magic are an error:
/// the caller decides whether to resynchronise (a serial console may carry
/// kernel noise before the first frame; see [`scan_for_magic`]).
pub fn read_frame(r: &mut impl Read, magic: &[u8; 4]) -> Result<Frame, FrameError> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(Frame::Eof),
            Ok(0) => return Err(FrameError::Malformed("truncated frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    read_body(r, header_len(&head, magic)?)
}

fn read_body(r: &mut impl Read, len: u32) -> Result<Frame, FrameError> {
    if len == SHUTDOWN_LEN {
        return Ok(Frame::Shutdown);
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Malformed("truncated frame payload"),
        _ => FrameError::Io(e),
    })?;
    Ok(Frame::Payload(payload))
}

/// The most skipped bytes [`scan_for_magic`] keeps (the last ones), for
/// error messages.
pub const KEPT_NOISE: usize = 4096;

/// Skip bytes until `magic` is seen, then read the rest of that frame.
/// Used by hosts reading a serial console, where boot messages may precede
/// the answer. More than `max_skip` skipped bytes is [`FrameError::Noise`]
/// (a guest that floods its console); only the last [`KEPT_NOISE`] skipped
/// bytes are returned (for error messages), so memory stays bounded. Reads
/// byte by byte: give it a buffered reader.
pub fn scan_for_magic(r: &mut impl Read, magic: &[u8; 4], max_skip: u64) -> Result<(Frame, Vec<u8>), FrameError> {
    let mut skipped = Vec::new();
    let mut skipped_total = 0u64;
    let mut window = [0u8; 4];
    let mut filled = 0usize;
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => return Ok((Frame::Eof, skipped)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if filled < 4 {
            window[filled] = byte[0];
            filled += 1;
        } else {
            skipped_total += 1;
            if skipped_total > max_skip {
                return Err(FrameError::Noise(max_skip));
            }
            if skipped.len() == 2 * KEPT_NOISE {
                skipped.drain(..KEPT_NOISE);
            }
            skipped.push(window[0]);
            window.rotate_left(1);
            window[3] = byte[0];
        }
        if filled == 4 && &window == magic {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let frame = read_body(r, u32::from_le_bytes(len))?;
            if skipped.len() > KEPT_NOISE {
                skipped.drain(..skipped.len() - KEPT_NOISE);
            }
            return Ok((frame, skipped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let req = Request {
            body: vec![0, 1, 2, 255],
            content_type: Some("image/jpeg".into()),
            metadata: vec![("file".into(), "a.jpg".into()), ("x".into(), "".into())],
        };
        assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        let bare = Request::new(b"hi".to_vec());
        assert_eq!(decode_request(&encode_request(&bare)).unwrap(), bare);
    }

    #[test]
    fn response_round_trip() {
        for r in [
            Ok(Response::new(b"x".to_vec()).with_content_type("text/plain")),
            Ok(Response::new(Vec::new())),
            Err(Error::BadRequest("no".into())),
            Err(Error::NotFound("gone".into())),
            Err(Error::Internal("boom".into())),
        ] {
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_request(&[1, 0, 0]).is_err());
        assert!(decode_request(&[5, 0, 0, 0, 1]).is_err());
        let mut ok = encode_request(&Request::new(b"a".to_vec()));
        ok.push(0);
        assert!(matches!(decode_request(&ok), Err(FrameError::Malformed("trailing bytes"))));
        assert!(decode_response(&[9]).is_err());
        for f in [Fault::Trap("boom".into()), Fault::MemoryLimit] {
            assert_eq!(decode_answer(&encode_fault(&f)).unwrap(), Answer::Fault(f));
        }
        // The allocation-free frame is exactly the encoded one.
        let mut framed = Vec::new();
        write_frame(&mut framed, RESPONSE_MAGIC, &encode_fault(&Fault::MemoryLimit)).unwrap();
        assert_eq!(framed, MEMORY_LIMIT_FRAME);
        let mut big = Vec::new();
        big.extend_from_slice(REQUEST_MAGIC);
        big.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(read_frame(&mut &big[..], REQUEST_MAGIC), Err(FrameError::TooLarge(_))));
        assert!(matches!(read_frame(&mut &b"LMQ"[..], REQUEST_MAGIC), Err(FrameError::Malformed(_))));
        assert!(matches!(read_frame(&mut &b"XXXX\0\0\0\0"[..], REQUEST_MAGIC), Err(FrameError::BadMagic(_))));
    }

    #[test]
    fn frames_and_scan() {
        let mut buf = b"[    0.1] kernel noise LM".to_vec();
        write_frame(&mut buf, RESPONSE_MAGIC, b"payload").unwrap();
        let (f, skipped) = scan_for_magic(&mut &buf[..], RESPONSE_MAGIC, 1 << 20).unwrap();
        assert_eq!(f, Frame::Payload(b"payload".to_vec()));
        assert_eq!(skipped, b"[    0.1] kernel noise LM");
        // A flood is an error past its bound, and only its tail is kept.
        let mut flood = vec![b'x'; 3 * KEPT_NOISE];
        flood.extend_from_slice(b"tail");
        write_frame(&mut flood, RESPONSE_MAGIC, b"p").unwrap();
        let (_, kept) = scan_for_magic(&mut &flood[..], RESPONSE_MAGIC, 1 << 20).unwrap();
        assert_eq!(kept.len(), KEPT_NOISE);
        assert!(kept.ends_with(b"xtail"));
        assert!(matches!(scan_for_magic(&mut &flood[..], RESPONSE_MAGIC, 1000), Err(FrameError::Noise(1000))));
        let mut sd = Vec::new();
        sd.extend_from_slice(REQUEST_MAGIC);
        sd.extend_from_slice(&SHUTDOWN_LEN.to_le_bytes());
        assert_eq!(read_frame(&mut &sd[..], REQUEST_MAGIC).unwrap(), Frame::Shutdown);
        assert_eq!(read_frame(&mut &b""[..], REQUEST_MAGIC).unwrap(), Frame::Eof);
    }
}
