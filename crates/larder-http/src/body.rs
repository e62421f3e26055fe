//! The response body the cache layer returns: bytes it has (a stored or
//! buffered response) or the inner service's body passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Errors of a passed-through body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a teed body does with its copy once the stream ended whole.
pub(crate) type OnComplete = Box<dyn FnOnce(Bytes) + Send + Sync>;

/// The copy a teed body keeps while it streams, until the end or the
/// limit.
pub struct TeeCopy {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    on_complete: OnComplete,
}

impl TeeCopy {
    /// The stream ended whole: hand the copy on.
    fn complete(self) {
        let whole = if self.chunks.len() == 1 {
            self.chunks.into_iter().next().unwrap_or_default()
        } else {
            let mut all = bytes::BytesMut::with_capacity(self.len);
            for chunk in self.chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        };
        (self.on_complete)(whole);
    }
}

impl std::fmt::Debug for TeeCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeCopy")
            .field("len", &self.len)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

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
        /// The inner service's body streamed to the client while a copy
        /// is kept to store (a response of unknown length): past the
        /// limit, on an error or on trailers the copy is dropped and the
        /// stream goes on.
        Tee {
            #[pin]
            body: B,
            copy: Option<TeeCopy>,
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
    /// The inner body, passed through while up to `limit` bytes are
    /// copied; `on_complete` gets the copy if the stream ends whole
    /// within the limit.
    pub(crate) fn tee(body: B, limit: usize, on_complete: OnComplete) -> Self {
        CacheBody::Tee {
            body,
            copy: Some(TeeCopy {
                chunks: Vec::new(),
                len: 0,
                limit,
                on_complete,
            }),
        }
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
            CacheBodyProj::Tee { mut body, copy } => {
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => match f.data_ref() {
                        Some(data) => {
                            let keep = copy.as_mut().is_some_and(|c| {
                                c.len += data.len();
                                c.chunks.push(data.clone());
                                c.len <= c.limit
                            });
                            if !keep && copy.take().is_some() {
                                tracing::debug!(
                                    "http cache: streamed body past the limit; not stored"
                                );
                            }
                            // A body that knows it ended is not polled
                            // again: complete the copy now.
                            if body.is_end_stream() {
                                if let Some(c) = copy.take() {
                                    c.complete();
                                }
                            }
                        }
                        // Trailers are not stored: neither is the body.
                        None => *copy = None,
                    },
                    Some(Err(_)) => *copy = None,
                    None => {
                        if let Some(c) = copy.take() {
                            c.complete();
                        }
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CacheBody::Full { data } => data.is_none(),
            CacheBody::Inner { body } | CacheBody::Tee { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CacheBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            CacheBody::Inner { body } | CacheBody::Tee { body, .. } => body.size_hint(),
        }
    }
}
