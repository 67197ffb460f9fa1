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

/// What a connection's read buffer takes when a message comes in.
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

/// One framed connection between the CLI and the daemon (or the daemon and
/// an app's supervisor).
///
/// It holds no buffer while it waits: the daemon keeps a connection to
/// every app's supervisor for its life, and each supervisor one to the
/// daemon, mostly idle. The read buffer is taken when the socket becomes
/// readable and given back once every byte read was a whole message; the
/// write buffer is given back once a message is sent.
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
            // No buffer until a message comes or goes (see above); then
            // 1 KiB to read (most frames are small: a larger one grows the
            // buffer to its size), and the message's size to write.
            framed: Framed::with_capacity(stream, codec, 0),
        }
    }

    /// Give the buffers back where nothing is left in them.
    fn release_empty_buffers(&mut self) {
        if self.framed.read_buffer().is_empty() {
            *self.framed.read_buffer_mut() = bytes::BytesMut::new();
        }
        if self.framed.write_buffer().is_empty() {
            *self.framed.write_buffer_mut() = bytes::BytesMut::new();
        }
    }

    /// How many bytes the buffers hold room for (both empty while idle).
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.framed.read_buffer().capacity() + self.framed.write_buffer().capacity()
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
        self.release_empty_buffers();
        Ok(())
    }

    /// The next message; an oversized frame is an I/O error (the codec
    /// refuses it before buffering it).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        if self.framed.read_buffer().capacity() == 0 {
            // Wait without a buffer; then room for a small message at once
            // (the codec would otherwise read a byte at a time).
            self.framed.get_ref().readable().await?;
            self.framed.read_buffer_mut().reserve(FIRST_BUFFER);
        }
        let frame = self.framed.next().await;
        self.release_empty_buffers();
        match frame {
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
    async fn an_idle_connection_holds_no_buffer() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Connection::new(a), Connection::new(b));
        assert_eq!(a.buffered_capacity() + b.buffered_capacity(), 0);
        // Two messages in one read, a large one among them: both arrive
        // whole, and each side gives its buffers back once they are empty.
        let large = "x".repeat(100_000);
        a.send(&serde_json::json!({"n": 1})).await.unwrap();
        a.send(&serde_json::json!({"n": 2, "large": large}))
            .await
            .unwrap();
        assert_eq!(a.buffered_capacity(), 0, "sent: nothing kept");
        let first: serde_json::Value = b.recv().await.unwrap();
        assert_eq!(first["n"], 1);
        let second: serde_json::Value = b.recv().await.unwrap();
        assert_eq!(second["n"], 2);
        assert_eq!(second["large"].as_str().unwrap().len(), 100_000);
        assert_eq!(b.buffered_capacity(), 0, "read to the end: nothing kept");
        // A message that is still coming keeps its bytes.
        let (mut raw, c) = UnixStream::pair().unwrap();
        let mut c = Connection::new(c);
        let body = br#"{"n":3}"#;
        raw.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(&body[..3]).await.unwrap();
        let pending = tokio::spawn(async move {
            let v: serde_json::Value = c.recv().await.unwrap();
            (v, c.buffered_capacity())
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        raw.write_all(&body[3..]).await.unwrap();
        let (v, kept) = pending.await.unwrap();
        assert_eq!(v["n"], 3);
        assert_eq!(kept, 0);
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
