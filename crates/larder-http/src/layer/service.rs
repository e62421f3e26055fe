use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::ResponseFuture;
use crate::body::{BoxError, CacheBody};
use crate::cache::{HttpCache, Overrides};

/// The service made by [`CacheLayer`](super::CacheLayer).
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    http: HttpCache,
    over: Overrides,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, http: HttpCache, over: Overrides) -> Self {
        CacheService { inner, http, over }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The ready service goes into the future; a clone stays (tower's
        // usual pattern, so poll_ready's readiness is the one used).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let http = self.http.clone();
        let over = self.over;
        ResponseFuture::new(Box::pin(async move { http.handle(inner, req, over).await }))
    }
}
