//! The router's inner middleware, inside routing so the route template is known: the request
//! span learns its route, the request is charged to its rate budget (a 429 otherwise), and the
//! answer, a 429 included, is counted and timed.
//!
//! It is one hand-written tower layer, not `axum::middleware::from_fn`, because it runs on
//! every request. Each `from_fn` layer clones and boxes the route's service and boxes its
//! future for every request. The three such layers it replaces (route, metrics, rate limit)
//! cost the webhook about a seventh of its CPU per order (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::problem::ApiError;
use super::{rate_limit, trace, AppState};

/// Wraps each route in [`Edge`].
#[derive(Clone)]
pub(super) struct EdgeLayer {
    state: AppState,
}

impl EdgeLayer {
    pub(super) fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A route with its route span field, rate limit and request metrics.
#[derive(Clone)]
pub(super) struct Edge<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        trace::record_route(route.as_ref().map(MatchedPath::as_str));
        let method = request.method().clone();
        let started = Instant::now();
        let answer = match rate_limit::admit(&self.state, &request) {
            Ok(()) => Answer::Routed {
                future: self.inner.call(request),
            },
            Err(refused) => Answer::Refused {
                response: Some(refused.into_response()),
            },
        };
        EdgeFuture {
            answer,
            route,
            method,
            started,
        }
    }
}

pin_project! {
    /// The route's answer, or the rate limit's.
    #[project = AnswerProjection]
    enum Answer<F> {
        Routed { #[pin] future: F },
        Refused { response: Option<Response> },
    }
}

pin_project! {
    /// Resolves to the answer once it is counted and timed.
    pub(super) struct EdgeFuture<F> {
        #[pin]
        answer: Answer<F>,
        route: Option<MatchedPath>,
        method: Method,
        started: Instant,
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.answer.project() {
            AnswerProjection::Routed { future } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            AnswerProjection::Refused { response } => match response.take() {
                Some(response) => response,
                // Polled again after it answered: a caller's bug, answered without counting.
                None => {
                    let bug = ApiError::Internal("edge future polled after completion".into());
                    return Poll::Ready(Ok(bug.into_response()));
                }
            },
        };
        crate::metrics::record_http(
            this.route.as_ref().map(MatchedPath::as_str),
            this.method,
            response.status(),
            this.started.elapsed(),
        );
        Poll::Ready(Ok(response))
    }
}
