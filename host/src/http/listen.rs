//! The accept loop: plain TCP, or TLS when the process has a TLS setup ([`crate::tls`]). A
//! TLS connection's client certificate, if any, names a node id; every request on it carries
//! that as a [`Transport`] extension, and the peer-only routes refuse connections without
//! one before any body is read.
//!
//! Hostile input (issue #13): connections are counted against `max_connections`, and peers
//! have a reserve of [`PEER_RESERVE`] slots of their own, so clients (or a slowloris) that
//! take every client slot cannot keep the cluster's nodes from reaching each other. A TLS
//! connection with a node certificate moves to the peers' slots after its handshake; one
//! accepted on the reserve must be a peer (a node certificate, or in plaintext, requests to
//! the peer routes only) or it is closed. Every phase has a deadline: the handshake
//! (`tls_handshake_timeout_ms`), each request's head (`header_timeout_ms`, which is also
//! how long an idle keep-alive connection stays open), each body's progress
//! (`body_timeout_ms`, `super::limits`), and each answer's: a client that stops reading
//! (its socket buffer full) for `write_timeout_ms` loses the connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Body, error, route};
use crate::driver::NodeHandle;
use crate::tls::{AcceptError, Transport};

/// Connections kept for peers beyond `max_connections` (each node keeps a few to each
/// other: its message stream, snapshot transfers, blob pushes, the dashboard's fan-out).
pub(super) const PEER_RESERVE: usize = 128;
/// Most header fields in one request (431 beyond).
pub(super) const MAX_HEADERS: usize = 100;

/// The connection slots: clients', and the peers' reserve.
struct Slots {
    clients: Arc<Semaphore>,
    peers: Arc<Semaphore>,
}

/// One connection's slot; the gauge of its kind counts it while it is held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Taken from the peers' reserve.
    peer: bool,
    gauge: Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, peer: bool, node: &NodeHandle) -> Slot {
        let gauge = node
            .metrics
            .connections(if peer { "peer" } else { "client" });
        gauge.inc();
        Slot {
            _permit: permit,
            peer,
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Slots {
    /// A client slot, else (provisionally) a peer's; `None` when both are full.
    fn take(&self, node: &NodeHandle) -> Option<Slot> {
        if let Ok(p) = self.clients.clone().try_acquire_owned() {
            return Some(Slot::new(p, false, node));
        }
        let p = self.peers.clone().try_acquire_owned().ok()?;
        Some(Slot::new(p, true, node))
    }

    /// A proven peer's connection gives its client slot back for a peer's, if one is free.
    fn to_peer(&self, slot: Slot, node: &NodeHandle) -> Slot {
        if slot.peer {
            return slot;
        }
        match self.peers.clone().try_acquire_owned() {
            Ok(p) => Slot::new(p, true, node),
            Err(_) => slot,
        }
    }
}

/// Serves clients and peers until the listener fails.
pub(super) async fn serve(listener: TcpListener, node: NodeHandle) -> std::io::Result<()> {
    let tls = crate::tls::installed().filter(|t| t.serves());
    let slots = Arc::new(Slots {
        clients: Arc::new(Semaphore::new(node.config.max_connections.max(1))),
        peers: Arc::new(Semaphore::new(PEER_RESERVE)),
    });
    let handshake = Duration::from_millis(node.config.tls_handshake_timeout_ms.max(1));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // the listener itself is fine; a pause lets descriptors come back.
                tracing::warn!(target: "keel::http", "accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(&node) else {
            node.metrics.connections_refused.inc();
            tracing::debug!(target: "keel::http", %from, "connection refused: every slot taken");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let tls = tls.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let plain = Transport {
                    tls: false,
                    peer: None,
                };
                return connection(TokioIo::new(stream), node, plain, slot).await;
            };
            match crate::tls::accept(&tls, stream, handshake).await {
                Ok((_, transport)) if slot.peer && transport.peer.is_none() => {
                    node.metrics.connections_refused.inc();
                    tracing::debug!(target: "keel::http", %from, "connection refused: only peers' slots left");
                }
                Ok((stream, transport)) => {
                    let slot = match transport.peer {
                        Some(_) => slots.to_peer(slot, &node),
                        None => slot,
                    };
                    connection(TokioIo::new(stream), node, transport, slot).await
                }
                Err(AcceptError::Plaintext) => {
                    tracing::debug!(target: "keel::tls", %from, "plaintext client told to use https");
                }
                Err(e) => {
                    if matches!(e, AcceptError::TimedOut) {
                        node.metrics.timed_out("handshake");
                    }
                    node.metrics.tls_refused.inc();
                    tracing::warn!(target: "keel::tls", %from, "connection refused: {e}");
                }
            }
        });
    }
}

async fn connection<S>(io: TokioIo<S>, node: NodeHandle, transport: Transport, slot: Slot)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A plaintext connection on the peers' reserve may only speak to the peer routes.
    let peers_only = slot.peer && !transport.tls;
    let handler = node.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let node = handler.clone();
        req.extensions_mut().insert(transport);
        async move { Ok::<_, Infallible>(guarded(node, req, transport, peers_only).await) }
    });
    let cfg = &node.config;
    // The deadline runs only while a write waits for the client and restarts with every
    // byte it takes: long streams (blobs, the peers' message streams) are not cut short.
    let mut io = tokio_io_timeout::TimeoutStream::new(io.into_inner());
    io.set_write_timeout(Some(Duration::from_millis(cfg.write_timeout_ms.max(1))));
    let io = TokioIo::new(Box::pin(io));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Malformed requests (bad framing, wrong content length) are answered by hyper itself
    // with 400, oversized heads (`max_header_bytes`, more than MAX_HEADERS fields) with
    // 431, and the connection closed.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_timeout_ms.max(1)))
        .max_headers(MAX_HEADERS)
        .max_header_size(cfg.max_header_bytes)
        .max_buf_size(cfg.max_header_bytes.max(64 << 10));
    if let Err(e) = builder.serve_connection(io, svc).await {
        if e.is_timeout() {
            node.metrics.timed_out("header");
        } else if write_timed_out(&e) {
            node.metrics.timed_out("write");
            tracing::debug!(target: "keel::http", "connection cut off: the client stopped reading its answer");
        }
    }
    drop(slot);
}

/// Refuses the peer-only routes to a TLS connection without a node certificate, and any
/// other route on a connection that holds a peer's slot.
async fn guarded(
    node: NodeHandle,
    req: Request<Incoming>,
    transport: Transport,
    peers_only: bool,
) -> Response<Body> {
    let peer_route = crate::tls::peer_only(req.method(), req.uri().path());
    if transport.tls && transport.peer.is_none() && peer_route {
        node.metrics.peer_identity_refused.inc();
        return error(
            StatusCode::FORBIDDEN,
            "this route is for cluster nodes: present a node certificate from the cluster CA",
        );
    }
    if peers_only && !peer_route {
        node.metrics.connections_refused.inc();
        let mut r = super::retry_later(&format!(
            "too many connections (max_connections = {})",
            node.config.max_connections
        ));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    route(node, req).await
}

/// Whether a connection ended because a write waited `write_timeout_ms` for the client.
fn write_timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}
