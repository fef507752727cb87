//! The terminal side of `wspair client`: stdin lines into messages, messages into stdout
//! lines, and the `# ` notes on stderr.
//!
//! stdout carries only the messages that arrive, one per line, so it can be piped; everything
//! about the connection goes to stderr. stdin is read on a thread of its own with blocking
//! reads: tokio's stdin would keep the runtime from shutting down while a read waits.

use std::io::{BufRead, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use tokio::sync::mpsc;

/// How stdin lines become messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Each line is a text message.
    Text,
    /// Each line's bytes are a binary message.
    Binary,
    /// Each line is hex, decoded into a binary message.
    Hex,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Whether it goes as a text message.
    pub text: bool,
    /// Its bytes (UTF-8 for text).
    pub payload: Bytes,
}

/// Turns one stdin line (without its line ending) into a message; `number` counts from 1.
pub fn decode_line(mode: InputMode, line: Vec<u8>, number: u64) -> Result<Outgoing, String> {
    match mode {
        InputMode::Text => match String::from_utf8(line) {
            Ok(text) => Ok(Outgoing {
                text: true,
                payload: Bytes::from(text),
            }),
            Err(_) => Err(format!(
                "line {number} is not UTF-8; --binary sends lines as binary messages"
            )),
        },
        InputMode::Binary => Ok(Outgoing {
            text: false,
            payload: Bytes::from(line),
        }),
        InputMode::Hex => decode_hex(&line)
            .map(|bytes| Outgoing {
                text: false,
                payload: Bytes::from(bytes),
            })
            .ok_or_else(|| format!("line {number} is not hex (two digits a byte)")),
    }
}

/// Hex digits, with any ASCII whitespace between bytes ignored.
fn decode_hex(line: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = line
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// Starts the thread that reads stdin: each line, decoded, arrives on the channel; the
/// channel closes at the end of stdin, or after the first line that does not decode.
pub fn read_stdin(mode: InputMode) -> mpsc::Receiver<Result<Outgoing, String>> {
    let (lines_tx, lines_rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut number = 0;
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) => {
                    let _ = lines_tx.blocking_send(Err(format!("cannot read stdin: {err}")));
                    return;
                }
            }
            number += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            let decoded = decode_line(mode, line, number);
            let failed = decoded.is_err();
            if lines_tx.blocking_send(decoded).is_err() || failed {
                return;
            }
        }
    });
    lines_rx
}

/// Writes what arrives to stdout and notes to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Binary messages in base64 rather than hex.
    pub base64: bool,
}

impl Printer {
    /// One message as one stdout line: text as it is, binary as lowercase hex or base64.
    /// Flushed at once, so a reader of a pipe sees it as it arrives.
    pub fn message(&self, text: bool, payload: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if text {
            out.write_all(payload)?;
        } else if self.base64 {
            out.write_all(BASE64.encode(payload).as_bytes())?;
        } else {
            for byte in payload {
                write!(out, "{byte:02x}")?;
            }
        }
        out.write_all(b"\n")?;
        out.flush()
    }

    /// A note about the connection: a `# ` line on stderr.
    pub fn note(&self, note: impl std::fmt::Display) {
        eprintln!("# {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_decode_by_mode() {
        let text = decode_line(InputMode::Text, b"hi".to_vec(), 1).unwrap();
        assert!(text.text);
        assert_eq!(text.payload, "hi");
        assert!(decode_line(InputMode::Text, vec![0xff], 1).is_err());
        let binary = decode_line(InputMode::Binary, vec![0xff], 1).unwrap();
        assert!(!binary.text);
        let hex = decode_line(InputMode::Hex, b"00 01fe FF".to_vec(), 1).unwrap();
        assert_eq!(hex.payload.as_ref(), [0x00, 0x01, 0xfe, 0xff]);
        assert!(decode_line(InputMode::Hex, b"abc".to_vec(), 2).is_err());
        assert!(decode_line(InputMode::Hex, b"zz".to_vec(), 3).is_err());
    }
}
