//! The response body type: whole, streamed frame by frame, or cut off mid-way by an injected fault.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body without boxing: a list of frames, optionally ending in an error that makes
/// hyper drop the connection (the "cut" fault).
pub(crate) struct MockBody {
    frames: std::vec::IntoIter<Bytes>,
    /// Fail after the last frame instead of ending cleanly.
    abort: bool,
    /// Yield once between frames so that hyper flushes each one to the socket on its own: SSE
    /// clients then see separate reads, and a cut body really delivers its first part.
    pace: bool,
    paused: bool,
    /// Announced length (`Content-Length`), even when the body is cut short.
    len: Option<u64>,
}

impl MockBody {
    /// A whole body sent at once, with a `Content-Length`.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        MockBody {
            len: Some(bytes.len() as u64),
            frames: vec![bytes].into_iter(),
            abort: false,
            pace: false,
            paused: false,
        }
    }

    /// An event stream (chunked), one frame per event; `abort` drops the connection after them.
    pub(crate) fn stream(frames: Vec<Bytes>, abort: bool) -> Self {
        MockBody {
            frames: frames.into_iter(),
            abort,
            pace: true,
            paused: false,
            len: None,
        }
    }

    /// A body announced whole by `Content-Length` but cut after its first half.
    pub(crate) fn cut(bytes: Bytes) -> Self {
        let half = bytes.slice(..bytes.len() / 2);
        MockBody {
            len: Some(bytes.len() as u64),
            frames: vec![half].into_iter(),
            abort: true,
            pace: true,
            paused: false,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.paused {
            self.paused = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.frames.next() {
            Some(frame) => {
                self.paused = self.pace;
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            None if self.abort => Poll::Ready(Some(Err(io::Error::other("mock fault: cut")))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.abort && self.frames.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}
