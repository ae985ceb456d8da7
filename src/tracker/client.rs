//! One announce or scrape to any tracker URL: picks HTTP or UDP, keeps what must carry over
//! between requests to the same tracker (UDP connection ids, HTTP `tracker id`), and bounds
//! every request in time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::http::HttpClient;
use super::response;
use super::udp;
use super::udp_proto::{Connection, Op, Outcome, Retransmit};
use super::url::{self, TrackerUrl};
use super::{AnnounceRequest, AnnounceResponse, ScrapeStats, TrackerError};
use crate::id::Id;

/// How requests are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our IP: requests come from it (unspecified: the system picks).
    pub local_ip: IpAddr,
    /// Longest time one HTTP request (with its redirects) may take.
    pub http_timeout: Duration,
    /// UDP retransmission (BEP 15).
    pub udp: Retransmit,
}

impl ClientConfig {
    /// Defaults for requests from `local_ip`: 30 s for HTTP, BEP 15's 15 s first timeout.
    pub fn new(local_ip: IpAddr) -> ClientConfig {
        ClientConfig {
            local_ip,
            http_timeout: Duration::from_secs(30),
            udp: Retransmit::default(),
        }
    }
}

/// Per-tracker state of one client (bounded by the trackers it is used with; a torrent has
/// at most [`MAX_TRACKERS`](super::tiers::MAX_TRACKERS)).
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    http: HttpClient,
    udp_conns: HashMap<TrackerUrl, Connection>,
    tracker_ids: HashMap<TrackerUrl, String>,
}

/// Most trackers whose state a client remembers.
const MAX_REMEMBERED: usize = 256;

impl Client {
    /// A client; fails only if the TLS stack cannot start.
    pub fn new(cfg: ClientConfig) -> Result<Client, TrackerError> {
        Ok(Client {
            http: HttpClient::new(cfg.local_ip, cfg.http_timeout)?,
            cfg,
            udp_conns: HashMap::new(),
            tracker_ids: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Announces to one tracker.
    pub async fn announce(
        &mut self,
        tracker: &TrackerUrl,
        req: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        match tracker {
            TrackerUrl::Http(base) => {
                let u =
                    url::announce_url(base, req, self.tracker_ids.get(tracker).map(String::as_str));
                let body = self.http.get(&u).await?;
                let r = response::parse_announce(&body)?;
                if let Some(id) = &r.tracker_id {
                    if self.tracker_ids.len() < MAX_REMEMBERED {
                        self.tracker_ids.insert(tracker.clone(), id.clone());
                    }
                }
                Ok(r)
            }
            TrackerUrl::Udp { .. } => match self.udp(tracker, Op::Announce(req.clone())).await? {
                Outcome::Announced(r) => Ok(r),
                Outcome::Scraped(_) => Err(TrackerError::Malformed("scrape answer".into())),
            },
        }
    }

    /// Asks one tracker for its counts of one torrent.
    pub async fn scrape(
        &mut self,
        tracker: &TrackerUrl,
        info_hash: &Id,
    ) -> Result<ScrapeStats, TrackerError> {
        match tracker {
            TrackerUrl::Http(_) => {
                let base = tracker.scrape_url().ok_or(TrackerError::NoScrape)?;
                let body = self.http.get(&url::scrape_url(&base, info_hash)).await?;
                response::parse_scrape(&body, info_hash)
            }
            TrackerUrl::Udp { .. } => match self.udp(tracker, Op::Scrape(*info_hash)).await? {
                Outcome::Scraped(s) => Ok(s),
                Outcome::Announced(_) => Err(TrackerError::Malformed("announce answer".into())),
            },
        }
    }

    async fn udp(&mut self, tracker: &TrackerUrl, op: Op) -> Result<Outcome, TrackerError> {
        let TrackerUrl::Udp { host, port } = tracker else {
            return Err(TrackerError::BadUrl(
                tracker.to_string(),
                "not a UDP tracker",
            ));
        };
        let to = udp::resolve(host, *port, self.cfg.local_ip).await?;
        let mut conn = self.udp_conns.get(tracker).copied();
        let r = udp::exchange(to, self.cfg.local_ip, op, self.cfg.udp, &mut conn).await;
        match conn {
            Some(c)
                if self.udp_conns.len() < MAX_REMEMBERED
                    || self.udp_conns.contains_key(tracker) =>
            {
                self.udp_conns.insert(tracker.clone(), c);
            }
            _ => {
                self.udp_conns.remove(tracker);
            }
        }
        r
    }
}
