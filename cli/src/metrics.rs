//! `/metrics` over HTTP for `coordinator run` and `agent run`
//! (docs/metrics.md): a small axum server that renders the daemon's
//! metrics on each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Renders a daemon's metrics in the Prometheus text format. It may read
/// files (`/proc`), so it runs off the runtime's threads.
pub type Render = Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>;

/// Where a daemon serves `/metrics`: the address the user gave (a bind
/// failure is an error), or the default one (a bind failure is a warning:
/// several daemons sharing one namespace all want the default port).
pub enum Listen {
    Given(SocketAddr),
    Default(SocketAddr),
}

/// Starts serving `/metrics` of `daemon` (for messages) at `listen`; returns
/// the address it listens on, `None` when the default one was taken.
pub async fn serve(
    daemon: &str,
    listen: Listen,
    content_type: &'static str,
    render: Render,
) -> anyhow::Result<Option<SocketAddr>> {
    let (addr, given) = match listen {
        Listen::Given(a) => (a, true),
        Listen::Default(a) => (a, false),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if !given => {
            tracing::warn!(%addr, error = %e, "metrics not served: the default address is taken; give --metrics-listen");
            eprintln!("{daemon}: metrics not served: cannot listen on {addr}: {e} (give --metrics-listen ADDR)");
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{daemon}: cannot serve metrics on {addr}"))
        }
    };
    let local = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || scrape(render.clone(), content_type)),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(Some(local))
}

async fn scrape(render: Render, content_type: &'static str) -> Response {
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("render: {e}\n")).into_response(),
    }
}
