//! `labspan web`: a local HTTP server (axum) that shows the cluster in a
//! browser, the way `kubectl proxy` does: it talks to the cluster with the
//! user's own cluster file (so the user's role applies), and the browser
//! needs no certificate. It follows the coordinators' state stream
//! (`Request::Watch`) and passes each change to the page as a server-sent
//! event. A node's serial console reaches the page over a websocket,
//! spliced to the cluster's console stream (`Request::Console`), so the
//! coordinators decide whose certificate may type into it. See docs/web.md.

mod console;
mod model;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use labspan_proto::msg::{ClusterView, Reply, Request};
use tokio::sync::watch;

/// The page: plain HTML and JavaScript, in the binary (works offline).
const INDEX: &str = include_str!("index.html");

/// Files from npm packages the page uses (deploy/web-assets.sh copies
/// them from the versions web/package-lock.json pins): name, type, bytes.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "xterm.js",
        "text/javascript",
        include_str!("assets/xterm.js"),
    ),
    ("xterm.css", "text/css", include_str!("assets/xterm.css")),
    (
        "addon-fit.js",
        "text/javascript",
        include_str!("assets/addon-fit.js"),
    ),
    (
        "cytoscape.min.js",
        "text/javascript",
        include_str!("assets/cytoscape.min.js"),
    ),
];

/// Pause before following the cluster again after the stream ended (a
/// leader change ends it) or no coordinator answered.
const RETRY: Duration = Duration::from_secs(1);

/// The page state as JSON, for every page open.
type Shared = Arc<watch::Sender<String>>;

/// What the handlers share: the page state and the cluster file consoles
/// are opened with.
#[derive(Clone)]
struct App {
    state: Shared,
    cluster: Arc<PathBuf>,
}

/// Serves the web view of the cluster `cluster` names on `listen` until the
/// process stops; only lab `only` when given.
pub async fn serve(
    cluster: PathBuf,
    listen: SocketAddr,
    only: Option<String>,
) -> anyhow::Result<()> {
    // Fail now, with the flag's name, rather than in the background.
    crate::remote::load_cluster_file(&cluster)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (give another --listen)"))?;
    let state: Shared = Arc::new(watch::Sender::new(
        serde_json::json!({"connecting": true}).to_string(),
    ));
    tokio::spawn(follow_cluster(cluster.clone(), only, state.clone()));
    let app = Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/state", get(current))
        .route("/events", get(events))
        .route("/assets/{name}", get(asset))
        .route("/console/{lab}/{node}", get(console::open))
        .with_state(App {
            state,
            cluster: Arc::new(cluster),
        });
    eprintln!(
        "labspan web: http://{}/ (stop with Ctrl-C)",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// One of the page's npm files, from the binary.
async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no asset {name}")).into_response(),
    }
}

/// The page state now (for scripts and tests).
async fn current(State(app): State<App>) -> impl IntoResponse {
    let json = app.state.borrow().clone();
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// Server-sent events: the state now, then each change (the browser's
/// `EventSource` reconnects by itself).
async fn events(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = app.state.subscribe();
    rx.mark_changed();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let json = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("state").data(json)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Follows the cluster's state stream for good, publishing each view as
/// the page's JSON; an error is shown on the page while it lasts.
async fn follow_cluster(cluster: PathBuf, only: Option<String>, state: Shared) {
    loop {
        if let Err(e) = follow_once(&cluster, only.as_deref(), &state).await {
            tracing::info!(error = %e, "web: the state stream ended; following again");
            state.send_replace(serde_json::json!({"error": format!("{e:#}")}).to_string());
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn follow_once(cluster: &Path, only: Option<&str>, state: &Shared) -> anyhow::Result<()> {
    let (client, _send, mut recv) = crate::remote::open_stream(cluster, &Request::Watch).await?;
    // The certificate's role, so that the page offers what it may do.
    let role = match crate::remote::call(&client, &Request::WhoAmI).await? {
        Reply::Identity { role, .. } => role,
        other => anyhow::bail!("unexpected reply to WhoAmI: {other:?}"),
    };
    loop {
        let view: ClusterView = labspan_transport::read_message(&mut recv)
            .await
            .context("the cluster's state stream")?;
        let page = model::page(&view, only, role);
        state.send_replace(serde_json::to_string(&page)?);
    }
}
