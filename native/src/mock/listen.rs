//! The accept loop and the top-level dispatch: the Batch API paths to `batches` (on the
//! server's [`Store`]), every other path to `server` (chat, control, 404).

use super::batches::{self, Store};
use super::body::MockBody;
use super::server::{self, Shared};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections until `shutdown` turns true, one task per connection.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    store: Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true).timer(TokioTimer::new());
    loop {
        let stream = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(%err, "mock server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // SSE frames and small bodies must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let store = store.clone();
        let mut shutdown = shutdown.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |req| handle(shared.clone(), store.clone(), req)),
        );
        tokio::spawn(async move {
            // Stopping the server closes open connections at once; dropping `conn` does that.
            tokio::select! {
                _ = conn => {}
                _ = stopped(&mut shutdown) => {}
            }
        });
    }
}

/// Resolves once the server is stopped (or its handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // Drop the borrow guard here: it is not `Send` and must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(drop);
}

/// One request: a Batch API path (see `batches::route`) or any other. An `Err` makes hyper
/// close the connection without a response (the "reset" fault).
async fn handle(
    shared: Arc<Shared>,
    store: Arc<Store>,
    req: Request<Incoming>,
) -> io::Result<Response<MockBody>> {
    if let Some(route) = batches::route(req.uri().path()) {
        return Ok(batches::handle(&shared, &store, route, req).await);
    }
    server::handle_api(&shared, req).await
}
