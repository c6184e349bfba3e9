//! The native runner: serve request frames from stdin (or a serial console)
//! with one handler, answering on stdout.

use crate::frame::{self, Frame};
use crate::{Error, Handler, Request, Response};
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Call `handler`, turning a panic into an `internal` error so that one bad
/// request never kills a long-running runner.
pub fn call(handler: Handler, req: Request) -> Result<Response, Error> {
    match std::panic::catch_unwind(move || handler(req)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!("function panicked: {msg}")))
        }
    }
}

/// Serve frames from `input` to `output` until EOF or a shutdown frame.
/// Returns how many requests were served.
pub fn serve(handler: Handler, input: impl Read, output: impl Write) -> Result<u64, frame::FrameError> {
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    let mut served = 0;
    loop {
        match frame::read_frame(&mut input, frame::REQUEST_MAGIC)? {
            Frame::Eof | Frame::Shutdown => return Ok(served),
            Frame::Payload(p) => {
                let res = match frame::decode_request(&p) {
                    Ok(req) => call(handler, req),
                    Err(e) => Err(Error::BadRequest(format!("undecodable request frame: {e}"))),
                };
                frame::write_frame(&mut output, frame::RESPONSE_MAGIC, &frame::encode_response(&res))?;
                served += 1;
            }
        }
    }
}

/// Entry point of a native function executable: serve stdin -> stdout and
/// exit 0 on EOF, 2 on a protocol error.
pub fn main(handler: Handler) -> ! {
    // A panic message on stderr is useful; the default hook's output is fine.
    let code = match serve(handler, io::stdin().lock(), io::stdout().lock()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("limes native runner: {e}");
            2
        }
    };
    std::process::exit(code)
}
