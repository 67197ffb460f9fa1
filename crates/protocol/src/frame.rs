//! Length-delimited JSON frames over a Unix socket, with a size cap.

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The largest frame either side accepts (a start request with many apps and
/// their environments fits easily).
pub const MAX_FRAME: usize = 4 << 20;

/// The largest app definition (as JSON) the daemon accepts: `show` sends a
/// definition back with the app's status beside it, which takes up to ~1.5
/// MiB more (4096 workers, as many draining), so a definition may use half a
/// frame and `show` always fits.
pub const MAX_DEFINITION: usize = MAX_FRAME / 2;

/// What a connection's read and write buffers start with.
const FIRST_BUFFER: usize = 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the other side closed the connection")]
    Closed,
}

/// One framed connection between the CLI and the daemon.
pub struct Connection {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(MAX_FRAME)
            .new_codec();
        Connection {
            // A connection's buffers start at 1 KiB (tokio-util's default
            // is 8 KiB each way): the daemon keeps a few connections per
            // app, each supervisor a few of its own, and most frames are
            // small. A larger frame grows the buffer to its size.
            framed: Framed::with_capacity(stream, codec, FIRST_BUFFER),
        }
    }

    /// Refuse frames longer than `max` from now on (at most [`MAX_FRAME`]):
    /// the daemon takes a hello in a few hundred bytes, not in 4 MiB.
    pub fn limit_frames(&mut self, max: usize) {
        self.framed
            .codec_mut()
            .set_max_frame_length(max.min(MAX_FRAME));
    }

    /// The socket underneath (for the peer's credentials).
    pub fn stream(&self) -> &UnixStream {
        self.framed.get_ref()
    }

    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let bytes = serde_json::to_vec(message)?;
        if bytes.len() > MAX_FRAME {
            return Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the message is {} bytes, over the {} byte limit",
                    bytes.len(),
                    MAX_FRAME
                ),
            )));
        }
        self.framed.send(bytes::Bytes::from(bytes)).await?;
        Ok(())
    }

    /// The next message; an oversized frame is an I/O error (the codec
    /// refuses it before buffering it).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        match self.framed.next().await {
            None => Err(FrameError::Closed),
            Some(Err(e)) => Err(FrameError::Io(e)),
            Some(Ok(bytes)) => Ok(serde_json::from_slice(&bytes)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn round_trip_and_oversized_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Connection::new(a), Connection::new(b));
        a.send(&serde_json::json!({"x": 1})).await.unwrap();
        let v: serde_json::Value = b.recv().await.unwrap();
        assert_eq!(v["x"], 1);

        let (raw, b) = UnixStream::pair().unwrap();
        let mut b = Connection::new(b);
        let mut raw = raw;
        raw.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = b.recv::<serde_json::Value>().await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_a_json_error() {
        let (mut raw, b) = UnixStream::pair().unwrap();
        let mut b = Connection::new(b);
        raw.write_all(&5u32.to_be_bytes()).await.unwrap();
        raw.write_all(b"{nope").await.unwrap();
        let err = b.recv::<serde_json::Value>().await.unwrap_err();
        assert!(matches!(err, FrameError::Json(_)), "{err}");
    }
}
