//! The peer transport's wire format, decoded with every size bounded before it is buffered
//! (issue #13): a stream of frames, each a `u32` little-endian length and a postcard
//! `Vec<Message>`. Pure functions over bytes, so that `tests/fuzz.rs` reaches them.
//!
//! A frame may be as large as [`MAX_PEER_FRAME`] only once the stream has proven it comes
//! from the cluster: over TLS by the node certificate, in plaintext by a first message that
//! carries the cluster's UUID. Until then frames are held to [`MAX_UNPROVEN_FRAME`], except
//! that a larger frame's first message header (its first [`HEAD_BYTES`] bytes at most) is
//! decoded and checked before the rest is read.

use bytes::{Buf, BytesMut};
use keel_raft::{ClusterId, Message, NodeId};

pub use super::{MAX_PEER_FRAME, MAX_UNPROVEN_FRAME};

/// Enough bytes for a batch's length and its first message's sender, receiver and cluster
/// (postcard varints: 10 + 10 + 10 + 19).
pub const HEAD_BYTES: usize = 49;

/// Who sent a frame's first message, read from the frame's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Messages in the batch.
    pub count: usize,
    /// The first message's sender.
    pub from: NodeId,
    /// Its cluster.
    pub cluster: ClusterId,
}

/// What the first bytes of a frame say.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadRead {
    /// Too few bytes yet.
    More,
    /// The batch is empty, or its start is not a message header.
    Malformed,
    /// The first message's header.
    Head(Head),
}

/// Decodes the header of a frame's first message from `prefix`, the frame's first bytes
/// (without the length); `whole` says whether `prefix` is the entire frame.
pub fn read_head(prefix: &[u8], whole: bool) -> HeadRead {
    match postcard::take_from_bytes::<(usize, NodeId, NodeId, ClusterId)>(prefix) {
        Ok(((count, from, _to, cluster), _)) if count > 0 => HeadRead::Head(Head {
            count,
            from,
            cluster,
        }),
        Ok(_) => HeadRead::Malformed,
        Err(postcard::Error::DeserializeUnexpectedEnd) if !whole && prefix.len() < HEAD_BYTES => {
            HeadRead::More
        }
        Err(_) => HeadRead::Malformed,
    }
}

/// Decodes one frame's batch.
pub fn decode_batch(frame: &[u8]) -> Result<Vec<Message>, postcard::Error> {
    postcard::from_bytes::<Vec<Message>>(frame)
}

/// Why a stream of frames was cut off.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame longer than the limit in force.
    TooLarge {
        /// Its declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A large frame on an unproven stream whose first message is not a header, or an
    /// empty batch.
    Malformed,
}

/// Splits a stream's bytes into frames, refusing each oversized one from its length alone
/// and, on an unproven stream, asking the caller to vouch for a large frame's header
/// before the rest of it is read.
#[derive(Default)]
pub struct Frames {
    buf: BytesMut,
    /// The stream has shown it belongs to the cluster: frames up to [`MAX_PEER_FRAME`].
    pub proven: bool,
}

/// The next thing a [`Frames`] holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Feed more bytes.
    More,
    /// An unproven stream's large frame: check this header, then call
    /// [`Frames::vouch`] (or refuse the stream).
    Check(Head),
    /// A whole frame.
    Frame(BytesMut),
}

impl Frames {
    /// A splitter; `proven` when the transport already authenticated the sender.
    pub fn new(proven: bool) -> Frames {
        Frames {
            buf: BytesMut::new(),
            proven,
        }
    }

    /// Appends bytes as they arrive. The caller has taken every frame [`Frames::poll_frame`]
    /// offered, so what is held is at most one frame within its limit, and `bytes`.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (part of a frame).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// What is held beyond the frames taken (the start of what follows them).
    pub fn into_rest(self) -> BytesMut {
        self.buf
    }

    /// Marks the stream proven (its frame's header checked, or a frame delivered).
    pub fn vouch(&mut self) {
        self.proven = true;
    }

    /// The next frame, if whole; an error for a frame that may not be read.
    pub fn poll_frame(&mut self) -> Result<Next, FrameError> {
        if self.buf.len() < 4 {
            return Ok(Next::More);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_PEER_FRAME {
            return Err(FrameError::TooLarge {
                len,
                limit: MAX_PEER_FRAME,
            });
        }
        if !self.proven && len > MAX_UNPROVEN_FRAME {
            let end = self.buf.len().min(4 + len);
            return match read_head(&self.buf[4..end], end == 4 + len) {
                HeadRead::More => Ok(Next::More),
                HeadRead::Malformed => Err(FrameError::Malformed),
                HeadRead::Head(head) => Ok(Next::Check(head)),
            };
        }
        if self.buf.len() < 4 + len {
            // The buffer grows with the bytes that come, never from the length alone.
            return Ok(Next::More);
        }
        self.buf.advance(4);
        Ok(Next::Frame(self.buf.split_to(len)))
    }
}
