//! A node's serial console in the page: a websocket spliced to the
//! cluster's console stream (`Request::Console`), opened with the user's own
//! cluster file. The coordinators decide who may use it (consoles are for
//! admins: a viewer's page gets the refusal, never a console).
//!
//! On the websocket, binary messages carry the console's bytes both ways
//! (text from the page is taken as its UTF-8 bytes); one text message that
//! starts with `error: ` says why the console is not there or has ended,
//! then the server closes.

use std::path::Path;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use labspan_proto::msg::Request;

use super::App;

/// `GET /console/{lab}/{node}`, upgraded to a websocket.
pub(super) async fn open(
    ws: WebSocketUpgrade,
    UrlPath((lab, node)): UrlPath<(String, String)>,
    State(app): State<App>,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let mut socket = socket;
        if let Err(e) = splice(&app.cluster, lab, node, &mut socket).await {
            // A refusal from the cluster already reads "error: ...".
            let why = format!("{e:#}");
            let why = match why.starts_with("error: ") {
                true => why,
                false => format!("error: {why}"),
            };
            let _ = socket.send(Message::Text(why.into())).await;
        }
        let _ = socket.send(Message::Close(None)).await;
    })
}

/// Copies bytes between the page and the guest's console until either side
/// ends.
async fn splice(
    cluster: &Path,
    lab: String,
    node: String,
    socket: &mut WebSocket,
) -> anyhow::Result<()> {
    let req = Request::Console { lab, node };
    let (client, mut to_guest, mut from_guest) = crate::remote::open_stream(cluster, &req).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let ended = loop {
        tokio::select! {
            read = from_guest.read(&mut buf) => match read {
                Ok(None) => break Ok(()),
                Ok(Some(n)) => {
                    let bytes = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(anyhow::anyhow!("the console stream: {e}")),
            },
            msg = socket.recv() => {
                let keys = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => axum::body::Bytes::from(t.as_str().to_owned()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The page closed the console.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ok(()),
                };
                if let Err(e) = to_guest.write_all(&keys).await {
                    break Err(anyhow::anyhow!("writing to the console: {e}"));
                }
            }
        }
    };
    let _ = to_guest.finish();
    client.close().await;
    ended
}
