//! The socket side of BEP 15: resolve the tracker, send the datagrams an
//! [`Exchange`](super::udp_proto::Exchange) asks for from a socket bound to our IP, and feed
//! it the answers and timeouts. One short-lived socket per exchange, connected to the
//! tracker, so only its datagrams arrive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::udp_proto::{Connection, Exchange, Op, Outcome, Retransmit, Step, MAX_DATAGRAM};
use super::TrackerError;

/// Longest wait for a host name to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first address `host:port` resolves to, preferring our own family.
pub async fn resolve(host: &str, port: u16, local: IpAddr) -> Result<SocketAddr, TrackerError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| TrackerError::Resolve(format!("{host} (timed out)")))?
            .map_err(|e| TrackerError::Resolve(format!("{host}: {e}")))?
            .take(16)
            .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| TrackerError::Resolve(host.to_string()))
}

/// The address to bind for reaching `to` from `local`: `local` when it is of the same family
/// and not unspecified (so the tracker records the address peers reach us at).
pub fn bind_addr(local: IpAddr, to: SocketAddr) -> SocketAddr {
    let ip = match (local, to) {
        (IpAddr::V4(l), SocketAddr::V4(_)) => IpAddr::V4(l),
        (IpAddr::V6(l), SocketAddr::V6(_)) => IpAddr::V6(l),
        (_, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Runs one exchange with the tracker at `to`. `conn` carries the connection id between
/// exchanges with the same tracker.
pub async fn exchange(
    to: SocketAddr,
    local: IpAddr,
    op: Op,
    retransmit: Retransmit,
    conn: &mut Option<Connection>,
) -> Result<Outcome, TrackerError> {
    let sock = UdpSocket::bind(bind_addr(local, to)).await?;
    sock.connect(to).await?;
    let (mut x, mut step) = Exchange::start(
        Instant::now().into_std(),
        op,
        to.is_ipv6(),
        retransmit,
        *conn,
        rand::random(),
    );
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deadline = Instant::now();
    let result = loop {
        match step {
            Step::Send {
                packet,
                deadline: d,
            } => {
                deadline = Instant::from_std(d);
                // A send error (e.g. ICMP port unreachable from an earlier datagram) is
                // like a lost datagram: the timeout decides.
                let _ = sock.send(&packet).await;
            }
            Step::Wait => {}
            Step::Done(r) => break r,
        }
        step = tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => x.on_datagram(Instant::now().into_std(), buf.get(..n).unwrap_or_default()),
                // Connection refused on a connected UDP socket: nobody listens there.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    break Err(TrackerError::Io(e));
                }
                Err(_) => Step::Wait,
            },
            _ = tokio::time::sleep_until(deadline) => x.on_timeout(Instant::now().into_std()),
        };
    };
    *conn = x.connection();
    result
}
