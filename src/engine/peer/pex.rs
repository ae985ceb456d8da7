//! BEP 11 peer exchange on one connection: the peers we are connected to go to this peer (the
//! first message at once, then at most one a minute, at most 50 added and 50 dropped each, as
//! [`PexSender`](crate::wire::PexSender) enforces), and the peers it names go to the driver's
//! peer list. Incoming PEX is rate limited so a peer cannot make us do work at its pace.
//! IPv4 and IPv6 peers travel together (`added`/`added6`, `added.f`/`added6.f`,
//! `dropped`/`dropped6`) under the IPv4 limits: a message we send holds at most 50 added and
//! 50 dropped over both families, one a minute; one we read keeps at most 50 of each list per
//! family, one per 20 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Conn, PeerError};
use crate::engine::events::Event;
use crate::wire::{encode, Message, PexFlags, PexMessage};

/// Incoming PEX closer together than this is ignored (BEP 11 senders wait a minute).
const MIN_PEX_IN_INTERVAL: Duration = Duration::from_secs(20);

impl Conn {
    /// Offers our current peers (as the driver sees them) to this peer.
    pub(super) fn send_pex(&mut self, peers: &[SocketAddr]) {
        let Some(their_id) = self.their_ut_pex else {
            return;
        };
        let list: Vec<(SocketAddr, PexFlags)> = peers
            .iter()
            .filter(|a| **a != self.addr && Some(**a) != self.listen)
            .map(|a| (*a, PexFlags::default()))
            .collect();
        let Some(msg) = self.pex.poll(Instant::now(), &list) else {
            return;
        };
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        encode(
            &Message::Extended {
                ext_id: their_id,
                payload,
            },
            &mut self.out,
        );
    }

    /// A PEX message from this peer: its added peers become candidates.
    pub(super) fn on_pex(&mut self, payload: &[u8]) -> Result<(), PeerError> {
        let now = Instant::now();
        if self
            .last_pex_in
            .is_some_and(|t| now.duration_since(t) < MIN_PEX_IN_INTERVAL)
        {
            return Ok(());
        }
        self.last_pex_in = Some(now);
        let msg = match PexMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(addr = %self.addr, error = %e, "bad ut_pex message ignored");
                return Ok(());
            }
        };
        // Both families (`added` and `added6`, BEP 11): the driver keeps those of the
        // families we listen on, so a dual-stack session learns IPv6 peers from an IPv4
        // connection and the other way round.
        let added: Vec<SocketAddr> = msg.added.iter().map(|(a, _)| *a).collect();
        if !added.is_empty() {
            let _ = self.t.events.send(Event::PexPeers(added));
        }
        Ok(())
    }
}
