//! Connection plumbing: per-peer errors, a bounded frame reader, socket options and the
//! BitTorrent handshake exchange.
//!
//! The reader never grows its buffer on a peer's word alone: a frame's length is validated by
//! [`crate::wire::frame_len`] (per message type, against [`Limits`]) before any room is made
//! for it, so a hostile length prefix costs us nothing.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::id::Id;
use crate::wire::{
    frame_len, ExtensionError, Handshake, HandshakeError, Limits, MetadataError, WireError,
    HANDSHAKE_LEN,
};

/// Why one peer connection ended. Never fatal to the download: the peer is just dropped.
#[derive(Debug, Error)]
pub(crate) enum PeerError {
    /// Socket error.
    #[error("i/o")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// Connect, handshake or idle timeout.
    #[error("timed out")]
    Timeout,
    /// A frame violated the wire protocol (oversized, bad length, ...).
    #[error("wire")]
    Wire(#[from] WireError),
    /// Not a BitTorrent handshake.
    #[error("handshake")]
    Handshake(#[from] HandshakeError),
    /// Bad extension handshake (e.g. a huge `metadata_size`).
    #[error("extension")]
    Extension(#[from] ExtensionError),
    /// Bad `ut_metadata` message or piece.
    #[error("metadata")]
    Metadata(#[from] MetadataError),
    /// Another protocol violation.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// More requests queued than [`super::EngineConfig::max_requests_per_peer`].
    #[error("too many outstanding requests")]
    TooManyRequests,
    /// Handshake for a torrent we do not have.
    #[error("unknown or wrong info-hash")]
    WrongTorrent,
    /// We dialed ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
    /// Our connection cap for the torrent is reached (not a verdict on the peer).
    #[error("connection limit reached")]
    LimitReached,
    /// The peer (by peer id) is connected already, e.g. over the other address family.
    #[error("peer already connected")]
    Duplicate,
    /// The peer was banned (sent bad data) or refused by a cap.
    #[error("dropped: {0}")]
    Dropped(&'static str),
    /// The torrent or engine is shutting down.
    #[error("shutting down")]
    Shutdown,
}

/// Initial read buffer; grows only to fit a validated frame.
const READ_BUF: usize = 256 * 1024;

/// Buffered reader of length-prefixed frames.
pub(crate) struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    /// Wraps the read half of a connection.
    pub(crate) fn new(rd: OwnedReadHalf) -> Reader {
        Reader {
            rd,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
        }
    }

    /// Bytes buffered and not yet consumed.
    pub(crate) fn available(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Drops `n` consumed bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room so that `need` bytes from the current start fit in the buffer (`need`
    /// must come from a validated frame length).
    fn make_room(&mut self, need: usize) {
        if self.start + need <= self.buf.len() && self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
    }

    /// Reads more bytes from the socket (at least one) and says how many; `Closed` on EOF.
    pub(crate) async fn fill(&mut self, limits: &Limits) -> Result<usize, PeerError> {
        // Room for the next whole frame if its header is already here, else a full buffer.
        let need = match frame_len(self.available(), limits)? {
            Some(total) => total.max(self.end - self.start + 1),
            None => self.end - self.start + 64,
        };
        self.make_room(need);
        let dst = self.buf.get_mut(self.end..).unwrap_or_default();
        let n = self.rd.read(dst).await?;
        if n == 0 {
            return Err(PeerError::Closed);
        }
        self.end += n;
        Ok(n)
    }

    /// The next complete frame's length (prefix included), if one is fully buffered.
    pub(crate) fn next_frame(&self, limits: &Limits) -> Result<Option<usize>, PeerError> {
        match frame_len(self.available(), limits)? {
            Some(total) if total <= self.end - self.start => Ok(Some(total)),
            _ => Ok(None),
        }
    }

    /// Reads the peer's 68-byte handshake.
    pub(crate) async fn read_handshake(&mut self) -> Result<Handshake, PeerError> {
        loop {
            if let Some(hs) = Handshake::decode(self.available())? {
                self.consume(HANDSHAKE_LEN);
                return Ok(hs);
            }
            let dst = self.buf.get_mut(self.end..).unwrap_or_default();
            let n = self.rd.read(dst).await?;
            if n == 0 {
                return Err(PeerError::Closed);
            }
            self.end += n;
        }
    }
}

/// Applies our socket options (no Nagle: requests are small and latency-bound).
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Dials `addr` with a timeout, from `local_ip` when given (so the peer sees the address we
/// listen on, and per-IP rules on its side apply to us as one host), setting buffer sizes
/// before connecting (so the window scale negotiated in the SYN fits them).
pub(crate) async fn connect(
    addr: SocketAddr,
    local_ip: Option<std::net::IpAddr>,
    timeout: Duration,
    socket_buffer: Option<u32>,
) -> Result<TcpStream, PeerError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local_ip.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if let Some(size) = socket_buffer {
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| PeerError::Timeout)??;
    tune(&stream);
    Ok(stream)
}

/// Outgoing side: sends our handshake, reads theirs, checks the info-hash and that we did
/// not dial ourselves. `also` is a hybrid's truncated v2 info-hash: an answer naming it is
/// the same torrent (BEP 52; libtorrent 2 answers with it once it knows us as a v2 peer).
pub(crate) async fn handshake_outgoing(
    stream: TcpStream,
    ours: Handshake,
    also: Option<Id>,
    timeout: Duration,
) -> Result<(Reader, OwnedWriteHalf, Handshake), PeerError> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = Reader::new(rd);
    let theirs = tokio::time::timeout(timeout, async {
        wr.write_all(&ours.to_bytes()).await?;
        reader.read_handshake().await
    })
    .await
    .map_err(|_| PeerError::Timeout)??;
    if theirs.info_hash != ours.info_hash && Some(theirs.info_hash) != also {
        tracing::debug!(sent = %ours.info_hash, answered = %theirs.info_hash,
            "handshake answered with another info-hash");
        return Err(PeerError::WrongTorrent);
    }
    if theirs.peer_id == ours.peer_id {
        return Err(PeerError::SelfConnection);
    }
    Ok((reader, wr, theirs))
}

/// Incoming side, first half: reads the peer's handshake so the caller can look up the
/// torrent by info-hash.
pub(crate) async fn handshake_incoming(
    stream: TcpStream,
    timeout: Duration,
) -> Result<(Reader, OwnedWriteHalf, Handshake), PeerError> {
    tune(&stream);
    let (rd, wr) = stream.into_split();
    let mut reader = Reader::new(rd);
    let theirs = tokio::time::timeout(timeout, reader.read_handshake())
        .await
        .map_err(|_| PeerError::Timeout)??;
    Ok((reader, wr, theirs))
}

/// Incoming side, second half: answers with our handshake.
pub(crate) async fn send_handshake(
    wr: &mut OwnedWriteHalf,
    info_hash: Id,
    peer_id: Id,
) -> Result<(), PeerError> {
    wr.write_all(&Handshake::new(info_hash, peer_id).to_bytes())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer that answers any handshake with `answer` as the info-hash.
    async fn answering(answer: Id) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; HANDSHAKE_LEN];
                if s.read_exact(&mut buf).await.is_ok() {
                    let hs = Handshake::new(answer, Id([9; 20]));
                    let _ = s.write_all(&hs.to_bytes()).await;
                }
            }
        });
        addr
    }

    /// A hybrid we dial under its v1 hash may be answered under its truncated v2 hash
    /// (libtorrent 2, once it found us under v2): the same torrent. Any other hash is not.
    #[tokio::test]
    async fn a_hybrid_dialled_by_v1_accepts_an_answer_under_its_v2_hash() {
        let (v1, v2, other) = (Id([1; 20]), Id([2; 20]), Id([3; 20]));
        let ours = Handshake::new(v1, Id([7; 20]));
        let t = Duration::from_secs(5);
        let at_v2 = answering(v2).await;
        let s = TcpStream::connect(at_v2).await.unwrap();
        let (_, _, theirs) = handshake_outgoing(s, ours, Some(v2), t)
            .await
            .expect("the v2 answer is the same hybrid");
        assert_eq!(theirs.info_hash, v2);
        // Not a hybrid (no v2 hash known): another torrent.
        let s = TcpStream::connect(at_v2).await.unwrap();
        let r = handshake_outgoing(s, ours, None, t).await;
        assert!(matches!(r, Err(PeerError::WrongTorrent)));
        // A hybrid answered with an unrelated hash: another torrent.
        let at_other = answering(other).await;
        let s = TcpStream::connect(at_other).await.unwrap();
        let r = handshake_outgoing(s, ours, Some(v2), t).await;
        assert!(matches!(r, Err(PeerError::WrongTorrent)));
    }
}
