//! Batched UDP I/O (`recvmmsg` / `sendmmsg`): one system call moves up to [`BATCH`]
//! datagrams, which is what lets one core answer a few hundred thousand queries per second.
//!
//! The buffers are allocated once per driver. The functions are non-blocking and return
//! `WouldBlock` like the socket would, so they slot into tokio's `try_io`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Datagrams moved per system call at most.
pub const BATCH: usize = 64;
/// Largest datagram we accept; longer ones are truncated by the kernel and dropped here.
pub const SLOT: usize = 4096;

fn to_sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(a.ip().octets()),
    };
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    if i32::from(s.sin_family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(s.sin_port),
    ))
}

/// Receive side: `BATCH` slots of `SLOT` bytes each.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
}

// SAFETY: the raw pointers inside point into this struct's own vectors and are rebuilt before
// every call; nothing is shared between threads.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Allocates the buffers.
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; BATCH * SLOT],
            // SAFETY: plain old data.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
        }
    }

    /// Reads up to `BATCH` datagrams without blocking; `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.iovs.clear();
        self.hdrs.clear();
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs.push(libc::iovec {
                // SAFETY: i * SLOT + SLOT <= bufs.len(), so the slot is inside the buffer.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            });
        }
        for i in 0..BATCH {
            // SAFETY: plain old data.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.truncated[i] = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// The `i`-th datagram of the last `recv`: source and bytes; `None` if it was truncated
    /// or came from a non-IPv4 address.
    pub fn get(&self, i: usize) -> Option<(SocketAddrV4, &[u8])> {
        if *self.truncated.get(i)? {
            return None;
        }
        let from = from_sockaddr(self.addrs.get(i)?)?;
        let len = (*self.lens.get(i)?).min(SLOT);
        let data = self.bufs.get(i * SLOT..i * SLOT + len)?;
        Some((from, data))
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

/// Send side: datagrams queued with [`SendBatch::push`] go out with one `sendmmsg`.
pub struct SendBatch {
    items: Vec<(libc::sockaddr_in, Vec<u8>)>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    sent: usize,
    /// Datagrams the kernel refused since the last [`SendBatch::take_failed`] (at most one
    /// batch: the driver collects them after every send).
    failed: Vec<(SocketAddrV4, Vec<u8>)>,
}

// SAFETY: as for RecvBatch.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> SendBatch {
        SendBatch {
            items: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            sent: 0,
            failed: Vec::new(),
        }
    }

    /// The datagrams refused since the last call (destination and bytes), so the driver can
    /// tell the core its own send failed rather than the remote.
    pub fn take_failed(&mut self) -> Vec<(SocketAddrV4, Vec<u8>)> {
        std::mem::take(&mut self.failed)
    }

    /// Queues a datagram.
    pub fn push(&mut self, to: &SocketAddrV4, data: Vec<u8>) {
        self.items.push((to_sockaddr(to), data));
    }

    /// Datagrams queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.items.len() - self.sent
    }

    /// True when nothing more can be queued before a send.
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH
    }

    /// Sends what is queued without blocking. Returns `WouldBlock` if the socket buffer is
    /// full (what was sent stays sent); other errors drop the offending datagram, as a lost
    /// UDP packet would be.
    pub fn send(&mut self, fd: RawFd) -> io::Result<()> {
        while self.sent < self.items.len() {
            self.iovs.clear();
            self.hdrs.clear();
            for (addr, data) in &mut self.items[self.sent..] {
                self.iovs.push(libc::iovec {
                    iov_base: data.as_mut_ptr().cast(),
                    iov_len: data.len(),
                });
                // SAFETY: plain old data.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                self.hdrs.push(h);
            }
            for (h, iov) in self.hdrs.iter_mut().zip(self.iovs.iter_mut()) {
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: headers point at live buffers owned by self.items / self.iovs.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram was refused (unreachable, bad address): skip it, and
                // remember it for the caller.
                tracing::debug!("send failed: {e}");
                if let Some((addr, data)) = self.items.get_mut(self.sent) {
                    if self.failed.len() < BATCH * 4 {
                        if let Some(to) = from_sockaddr(addr) {
                            self.failed.push((to, std::mem::take(data)));
                        }
                    }
                }
                self.sent += 1;
                continue;
            }
            self.sent += n as usize;
        }
        self.items.clear();
        self.sent = 0;
        Ok(())
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v) => v,
            _ => unreachable!(),
        };
        let mut s = SendBatch::new();
        for i in 0..10u8 {
            s.push(&to, vec![i; usize::from(i) + 1]);
        }
        s.send(a.as_raw_fd()).unwrap();
        let mut r = RecvBatch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 10 && std::time::Instant::now() < deadline {
            match r.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, data) = r.get(i).unwrap();
                        assert_eq!(from.port(), a.local_addr().unwrap().port());
                        got.push(data.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; i + 1]);
        }
    }

    #[test]
    fn refused_datagrams_are_handed_back() {
        // Broadcast without SO_BROADCAST: the kernel refuses it (EACCES), a local error.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ok = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v) => v,
            _ => unreachable!(),
        };
        let refused = SocketAddrV4::new(Ipv4Addr::BROADCAST, 6881);
        let mut s = SendBatch::new();
        s.push(&ok, b"first".to_vec());
        s.push(&refused, b"lost".to_vec());
        s.push(&ok, b"third".to_vec());
        s.send(a.as_raw_fd()).unwrap();
        assert_eq!(s.take_failed(), vec![(refused, b"lost".to_vec())]);
        assert!(s.take_failed().is_empty());
    }
}
