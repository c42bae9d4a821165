//! The helper socket's framing: a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON. Events are framed once here and the same bytes go
//! to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// The largest frame body either side may send (helper-protocol.md).
pub const MAX_FRAME: usize = 10 * 1024 * 1024;

/// Frames a serializable value. Fails only if `value` cannot be serialized
/// or comes out larger than [`MAX_FRAME`].
pub fn encode_frame<T: serde::Serialize + ?Sized>(value: &T) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_u32(0);
    serde_json::to_writer((&mut buf).writer(), value).map_err(FrameError::Json)?;
    set_length(&mut buf)?;
    Ok(buf.freeze())
}

/// Writes the length of `frame`'s body (all after its first four bytes)
/// into those four bytes, or refuses a body over [`MAX_FRAME`].
fn set_length(frame: &mut [u8]) -> Result<(), FrameError> {
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    // The length fits in u32: MAX_FRAME does.
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The frame of a `stdout` or `stderr` event (`kind`), written straight
/// from the output's text: the same bytes [`encode_frame`] makes of
/// [`crate::event::Event::Stdout`] or `Stderr`, without first copying the
/// text into an event. Output is the bulk of what the helper sends, and
/// escaping it was the largest cost of sending it: the text is escaped
/// with SIMD (json-escape-simd, sonic-rs's escaper) into `scratch`, a
/// buffer the caller keeps from one chunk to the next (up to
/// [`SCRATCH_KEPT`]), and copied out once.
pub fn encode_output_frame(
    kind: OutputKind,
    id: &str,
    data: &str,
    scratch: &mut Vec<u8>,
) -> Result<Bytes, FrameError> {
    scratch.clear();
    scratch.extend_from_slice(&[0; 4]);
    scratch.extend_from_slice(match kind {
        OutputKind::Stdout => br#"{"type":"stdout","id":"#,
        OutputKind::Stderr => br#"{"type":"stderr","id":"#,
    });
    serde_json::to_writer(&mut *scratch, id).map_err(FrameError::Json)?;
    scratch.extend_from_slice(br#","data":""#);
    // In pieces: the escaper reserves six times its input beyond the end,
    // and a piece keeps that headroom small whatever the chunk's size.
    let mut rest = data;
    while !rest.is_empty() {
        let mut cut = rest.len().min(ESCAPE_PIECE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        let start = scratch.len();
        json_escape_simd::escape_into(piece, scratch);
        // Each piece comes back quoted: drop its quotes.
        scratch.copy_within(start + 1.., start);
        scratch.truncate(scratch.len() - 2);
        rest = tail;
    }
    scratch.extend_from_slice(b"\"}");
    let frame = set_length(scratch).map(|()| Bytes::copy_from_slice(scratch));
    // A chunk of control characters escapes to six times its size: such a
    // buffer is not kept for the rest of the stream.
    if scratch.capacity() > SCRATCH_KEPT {
        *scratch = Vec::new();
    }
    frame
}

/// Text escaped per call of the escaper.
const ESCAPE_PIECE: usize = 16 * 1024;
/// Room a stream keeps between chunks for framing its output: a 256 KiB
/// chunk of ordinary text fits.
const SCRATCH_KEPT: usize = 512 * 1024;

/// Which output stream an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("cannot encode JSON: {0}")]
    Json(serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_big_endian_length_prefix() {
        let f = encode_frame(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&f[..4], &7u32.to_be_bytes());
        assert_eq!(&f[4..], br#"{"a":1}"#);
    }

    #[test]
    fn output_frames_are_the_events_frames() {
        for (id, data) in [
            ("p1", "hi\n"),
            ("", ""),
            (
                "id \"quoted\" \\",
                "tab\there \u{1} \u{7f} é € \u{1F600} </script>\r\n",
            ),
            ("x", &"line of output\n".repeat(1000)),
            // Many escaper pieces, characters of every width on their seams.
            ("y", &"é€\u{1F600}\n\"\\ab\u{1}".repeat(20_000)),
            ("z", &"\u{1}".repeat(3 * ESCAPE_PIECE + 7)),
        ] {
            same_frames(id, data);
        }
        let big = "x".repeat(MAX_FRAME);
        assert!(matches!(
            encode_output_frame(OutputKind::Stdout, "p", &big, &mut Vec::new()),
            Err(FrameError::TooLarge(_))
        ));
        // A chunk of ordinary text keeps its buffer; one that escaped to
        // six times its size does not.
        let mut scratch = Vec::new();
        let text = "output line\n".repeat(256 * 1024 / 12);
        encode_output_frame(OutputKind::Stdout, "p", &text, &mut scratch).unwrap();
        assert!(scratch.capacity() > 0 && scratch.capacity() <= SCRATCH_KEPT);
        let controls = "\u{1}".repeat(256 * 1024);
        encode_output_frame(OutputKind::Stdout, "p", &controls, &mut scratch).unwrap();
        assert!(scratch.capacity() <= SCRATCH_KEPT);
    }

    fn same_frames(id: &str, data: &str) {
        use crate::event::Event;
        let mut scratch = Vec::new();
        let out = Event::Stdout {
            id: id.into(),
            data: data.into(),
        };
        assert_eq!(
            encode_output_frame(OutputKind::Stdout, id, data, &mut scratch).unwrap(),
            encode_frame(&out).unwrap(),
            "{data:?}"
        );
        let err = Event::Stderr {
            id: id.into(),
            data: data.into(),
        };
        assert_eq!(
            encode_output_frame(OutputKind::Stderr, id, data, &mut scratch).unwrap(),
            encode_frame(&err).unwrap()
        );
    }

    /// Every length across the escaper's vector widths, with every
    /// character class placed at every offset: the same bytes as serde.
    #[test]
    fn output_frames_match_serde_for_any_text() {
        let alphabet: Vec<char> = (0u8..0x80)
            .map(char::from)
            .chain(['é', '€', '\u{1F600}', '\u{2028}', '\u{FFFD}'])
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..300 {
            for _ in 0..8 {
                let text: String = (0..len)
                    .map(|_| {
                        // Mostly plain text, as output is, with the rest
                        // drawn from every class.
                        let r = next();
                        if r % 4 == 0 {
                            alphabet[(r >> 8) as usize % alphabet.len()]
                        } else {
                            char::from(b'a' + (r >> 8) as u8 % 26)
                        }
                    })
                    .collect();
                same_frames("p1", &text);
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused() {
        let big = "x".repeat(MAX_FRAME);
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(_))));
    }
}
