//! The accept loop: plain TCP, or TLS when the process has a TLS setup ([`crate::tls`]). A
//! TLS connection's client certificate, if any, names a node id; every request on it carries
//! that as a [`Transport`] extension, and the peer-only routes refuse connections without
//! one before any body is read.

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Body, error, route};
use crate::driver::NodeHandle;
use crate::tls::{AcceptError, Transport};

/// Serves clients and peers until the listener fails.
pub(super) async fn serve(listener: TcpListener, node: NodeHandle) -> std::io::Result<()> {
    let tls = crate::tls::installed().filter(|t| t.serves());
    loop {
        let (stream, from) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let plain = Transport {
                    tls: false,
                    peer: None,
                };
                return connection(TokioIo::new(stream), node, plain).await;
            };
            match crate::tls::accept(&tls, stream).await {
                Ok((stream, transport)) => connection(TokioIo::new(stream), node, transport).await,
                Err(AcceptError::Plaintext) => {
                    tracing::debug!(target: "keel::tls", %from, "plaintext client told to use https");
                }
                Err(e) => {
                    node.metrics.tls_refused.inc();
                    tracing::warn!(target: "keel::tls", %from, "connection refused: {e}");
                }
            }
        });
    }
}

async fn connection<S>(io: TokioIo<S>, node: NodeHandle, transport: Transport)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let node = node.clone();
        req.extensions_mut().insert(transport);
        async move { Ok::<_, Infallible>(guarded(node, req, transport).await) }
    });
    // Malformed requests (bad framing, wrong content length, oversized headers) are
    // answered by hyper itself with 400/431 and the connection closed.
    let _ = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 << 10)
        .serve_connection(io, svc)
        .await;
}

/// Refuses the peer-only routes to a TLS connection without a node certificate.
async fn guarded(node: NodeHandle, req: Request<Incoming>, transport: Transport) -> Response<Body> {
    if transport.tls
        && transport.peer.is_none()
        && crate::tls::peer_only(req.method(), req.uri().path())
    {
        node.metrics.peer_identity_refused.inc();
        return error(
            StatusCode::FORBIDDEN,
            "this route is for cluster nodes: present a node certificate from the cluster CA",
        );
    }
    route(node, req).await
}
