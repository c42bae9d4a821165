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
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    // The length fits in u32: MAX_FRAME does.
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf.freeze())
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
    fn oversized_frame_is_refused() {
        let big = "x".repeat(MAX_FRAME);
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(_))));
    }
}
