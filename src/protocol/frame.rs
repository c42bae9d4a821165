//! Reading length-prefixed frames from an untrusted stream.

use std::time::Duration;

use cowork_backend::wire::MAX_FRAME;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A frame whose first byte arrived must be complete within this time; a
/// peer that stalls mid-frame is dropped. Idle time between frames is fine.
pub const FRAME_COMPLETION: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("frame not completed within {}s", FRAME_COMPLETION.as_secs())]
    Stalled,
    #[error("connection closed mid-frame")]
    Truncated,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The next frame's body, or `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut body = Vec::new();
    Ok(read_frame_into(r, &mut body).await?.then_some(body))
}

/// [`read_frame`] into `body` (cleared first; its capacity is kept), for a
/// reader of many frames: a stream of output events then costs no
/// allocation per frame. False at a clean end of stream.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
) -> Result<bool, FrameReadError> {
    body.clear();
    let mut len = [0u8; 4];
    let first = r.read(&mut len).await?;
    if first == 0 {
        return Ok(false);
    }
    let rest = async {
        r.read_exact(&mut len[first..]).await?;
        let n = u32::from_be_bytes(len) as u64;
        if n > MAX_FRAME as u64 {
            return Err(FrameReadError::TooLarge(n));
        }
        // Allocate as bytes arrive rather than trusting the length up front.
        body.reserve((n as usize).min(64 * 1024));
        let got = r.take(n).read_to_end(body).await?;
        if got as u64 != n {
            return Err(FrameReadError::Truncated);
        }
        Ok(true)
    };
    match tokio::time::timeout(FRAME_COMPLETION, rest).await {
        Ok(Ok(got)) => Ok(got),
        Ok(Err(FrameReadError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FrameReadError::Truncated)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FrameReadError::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_refuses_bad_ones() {
        let mut data: &[u8] = &[0, 0, 0, 2, b'{', b'}', 0, 0];
        assert_eq!(read_frame(&mut data).await.unwrap().unwrap(), b"{}");
        assert!(matches!(
            read_frame(&mut data).await,
            Err(FrameReadError::Truncated)
        ));
        let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut big).await,
            Err(FrameReadError::TooLarge(_))
        ));
        let mut short: &[u8] = &[0, 0, 0, 9, b'{'];
        assert!(matches!(
            read_frame(&mut short).await,
            Err(FrameReadError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).await.unwrap().is_none());
    }
}
