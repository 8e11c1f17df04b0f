//! `labspan web`: a local HTTP server (axum) that shows the cluster in a
//! browser, the way `kubectl proxy` does: it talks to the cluster with the
//! user's own cluster file (so the user's role applies), and the browser
//! needs no certificate. It follows the coordinators' state stream
//! (`Request::Watch`) and passes each change to the page as a server-sent
//! event. A node's serial console reaches the page over a websocket,
//! spliced to the cluster's console stream (`Request::Console`), so the
//! coordinators decide whose certificate may type into it. Each node's
//! progress (`Request::Follow`, as `labspan events --json` shows it) goes
//! to the page as `step` events. See docs/web.md.

mod console;
mod model;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use labspan_proto::msg::{ClusterView, Reply, Request};
use tokio::sync::watch;

use crate::progress::{Mode, Renderer};

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

/// Steps a page opened late is sent first.
const RECENT_STEPS: usize = 50;

/// Each step of the labs' progress as JSON, for every page open, and the
/// last few.
#[derive(Clone)]
struct Steps {
    tx: tokio::sync::broadcast::Sender<String>,
    recent: Arc<Mutex<VecDeque<String>>>,
}

impl Steps {
    fn publish(&self, json: String) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_STEPS {
                recent.pop_front();
            }
            recent.push_back(json.clone());
        }
        // No page open: nobody to tell.
        let _ = self.tx.send(json);
    }
}

/// Takes the JSON lines a [`Renderer`] writes and publishes each one.
struct StepLines {
    steps: Steps,
    partial: Vec<u8>,
}

impl Write for StepLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if !line.is_empty() {
                self.steps.publish(line);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the handlers share: the page state, the steps, and the cluster
/// file consoles are opened with.
#[derive(Clone)]
struct App {
    state: Shared,
    steps: Steps,
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
    let steps = Steps {
        tx: tokio::sync::broadcast::channel(256).0,
        recent: Arc::default(),
    };
    tokio::spawn(follow_cluster(cluster.clone(), only.clone(), state.clone()));
    tokio::spawn(follow_steps(cluster.clone(), only, steps.clone()));
    let app = Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/state", get(current))
        .route("/events", get(events))
        .route("/assets/{name}", get(asset))
        .route("/console/{lab}/{node}", get(console::open))
        .with_state(App {
            state,
            steps,
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

/// Server-sent events: the state now, then each change (`state`); the
/// last steps, then each new one (`step`). The browser's `EventSource`
/// reconnects by itself.
async fn events(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = app.state.subscribe();
    rx.mark_changed();
    let states = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let json = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("state").data(json)), rx))
    });
    // Subscribed before the recent ones are read: a step published in
    // between is sent twice at worst, never lost.
    let live = app.steps.tx.subscribe();
    let recent: Vec<String> = (app.steps.recent.lock())
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    let step = |json: String| Ok(Event::default().event("step").data(json));
    let earlier = futures::stream::iter(recent.into_iter().map(step));
    let later = futures::stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(json) => return Some((step(json), live)),
                // A slow page misses some steps, not the stream.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::stream::select(states, earlier.chain(later));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Follows the labs' progress for good (the follow dials the cluster
/// again by itself once it is open), publishing each step as JSON. A
/// retry for the life of the page, not a wait: no `Poll`, no deadline.
async fn follow_steps(cluster: PathBuf, only: Option<String>, steps: Steps) {
    let sink = StepLines {
        steps,
        partial: Vec::new(),
    };
    let show = Renderer::to(Mode::Json, Box::new(sink));
    loop {
        match crate::follow::start(&cluster, only.as_deref(), show.clone()).await {
            Ok(following) => following.forever().await,
            Err(e) => tracing::info!(error = %e, "web: no progress stream yet; trying again"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Follows the cluster's state stream for good, publishing each view as
/// the page's JSON; an error is shown on the page while it lasts. A retry
/// for the life of the page, not a wait: no `Poll`, no deadline.
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
