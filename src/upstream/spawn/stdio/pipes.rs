//! The threads that pump the child's stdin and stdout.

use std::io::{BufRead, BufReader, Write};

use super::{Bridge, MAX_LINE_BYTES};

/// Reads the child's stdout line by line into `bridge` until it closes;
/// then the bridge closes. A line over [`MAX_LINE_BYTES`] is skipped as it
/// streams by.
pub fn read_stdout(stdout: impl std::io::Read, bridge: &Bridge) {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    let mut line = Vec::new();
    let mut overlong = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (piece, used, ends) = match memchr::memchr(b'\n', buf) {
            Some(at) => (&buf[..at], at + 1, true),
            None => (buf, buf.len(), false),
        };
        if !overlong {
            if line.len() + piece.len() > MAX_LINE_BYTES {
                overlong = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(piece);
            }
        }
        reader.consume(used);
        if ends {
            if overlong {
                bridge.overlong_line();
            } else {
                bridge.route_child_line(&line);
            }
            line.clear();
            overlong = false;
        }
    }
    bridge.close();
}

/// Writes queued lines to the child's stdin until either side is gone.
pub fn write_stdin(mut stdin: impl Write, lines: std::sync::mpsc::Receiver<Vec<u8>>) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
}
