//! The response body the cache layer returns: bytes it has (a stored or
//! buffered response) or the inner service's body passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Errors of a passed-through body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body from the cache, or the inner service's. Build it
    /// with [`CacheBody::full`] or [`CacheBody::inner`].
    #[project = CacheBodyProj]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields

    pub enum CacheBody<B> {
        /// Bytes held by the cache (a hit, or a response it buffered to store).
        Full {
            data: Option<Bytes>,
        },
        /// The inner service's body, untouched (streamed, uncached).
        Inner {
            #[pin]
            body: B,
        },
    }
}

impl<B> CacheBody<B> {
    /// A body of these bytes.
    pub fn full(data: Bytes) -> Self {
        CacheBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
    /// The inner body, passed through.
    pub fn inner(body: B) -> Self {
        CacheBody::Inner { body }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            CacheBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            CacheBodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CacheBody::Full { data } => data.is_none(),
            CacheBody::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CacheBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            CacheBody::Inner { body } => body.size_hint(),
        }
    }
}
