//! `GET /v1/snapshot`: a backup of the applied state and the blobs it needs, streamed as a
//! tar file (`crate::backup`; `keel snapshot save`).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use super::{Body, error};
use crate::driver::{Input, NodeHandle};

/// Chunks of the archive queued ahead of the connection.
const AHEAD: usize = 4;

/// Streams a backup of this node's applied state.
pub(super) async fn save(node: &NodeHandle) -> Response<Body> {
    // Thesis §6.4: a read barrier first (a follower asks its leader), so the backup holds
    // every write acknowledged before it was asked for, on whichever node serves it; then
    // the applied state as storage holds it after a flush.
    let (tx, rx) = oneshot::channel();
    if node
        .submit(Input::Read {
            mode: keel_raft::ReadMode::ReadIndex,
            reply: tx,
        })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        );
    }
    let timeout = std::time::Duration::from_millis(node.config.default_timeout_ms);
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(_))) => {}
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot confirm this node is up to date (no leader?); retry",
            );
        }
    }
    let (tx, rx) = oneshot::channel();
    if node.submit(Input::Flush(tx)).is_err() || rx.await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        );
    }
    let (tx, rx) = oneshot::channel();
    if node.submit(Input::BlobsNeeded(tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        );
    }
    let Ok(crate::blobs::Keep { needed, .. }) = rx.await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot tell which blobs the state needs",
        );
    };
    let view: Box<dyn keel_storage::StateView + Send> =
        match keel_storage::Storage::view(&*node.storage) {
            Ok(v) => Box::new(v),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("storage: {e}")),
        };
    let applied = keel_storage::StateView::applied(&*view).last_applied;
    let (chunks, rx) = mpsc::channel::<Bytes>(AHEAD);
    let blobs = node.blobs.clone();
    let cluster = node.cluster.to_string();
    let scratch = node
        .config
        .data_dir
        .join(format!("backup-{}.keelsnap.tmp", applied.index));
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(chunks));
        match crate::backup::write(view, &cluster, &blobs, &needed, &scratch, out) {
            Ok(m) => {
                tracing::info!(target: "keel::txn", index = m.index, blobs = m.blobs.len(), "backup streamed")
            }
            // The body ends short; `keel snapshot save` finds the archive incomplete.
            Err(e) => tracing::warn!(target: "keel::txn", "backup failed: {e:#}"),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
    let headers = r.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-tar"),
    );
    headers.insert("keel-snapshot-index", applied.index.into());
    headers.insert("keel-snapshot-term", applied.term.into());
    r
}

/// Bytes written here go to the response body; a closed connection fails the write.
struct ChannelWriter(mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::other("the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
