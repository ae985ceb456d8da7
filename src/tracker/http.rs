//! The HTTP side: one GET per announce or scrape, with a bounded body, bounded redirects and
//! an overall timeout, from our own IP.
//!
//! Why reqwest (rustls with ring, no default features): it is async on the tokio runtime we
//! already run, it speaks HTTPS (many public trackers are HTTPS-only), and unlike the lighter
//! `ureq` it can bind the local address of its connections (`local_address`), which a tracker
//! needs: it records the *source* IP of the announce as the address peers reach us at.

use std::net::IpAddr;
use std::time::Duration;

use super::TrackerError;

/// Largest answer body we read (a compact answer with 1000 peers is about 6 KiB; real
/// trackers stay far below this, and more is cut with [`TrackerError::TooLarge`]).
pub const MAX_BODY: usize = 512 * 1024;
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// A reusable HTTP client bound to one local IP.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    /// A client whose connections come from `local` (unless it is unspecified) and whose
    /// requests end after `timeout` whatever happens.
    pub fn new(local: IpAddr, timeout: Duration) -> Result<HttpClient, TrackerError> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .user_agent(concat!("dhtnode/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if !local.is_unspecified() {
            b = b.local_address(local);
        }
        let client = b
            .build()
            .map_err(|e| TrackerError::Http(crate::error_text::error_chain(&e)))?;
        Ok(HttpClient { client })
    }

    /// GETs `url` and returns the body of a 200 answer. A non-200 answer whose body is
    /// bencoded is returned too (trackers send `failure reason` with 4xx codes); otherwise it
    /// is [`TrackerError::Status`].
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, TrackerError> {
        let mut resp = self.client.get(url).send().await.map_err(classify)?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(TrackerError::TooLarge(MAX_BODY));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(TrackerError::TooLarge(MAX_BODY));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() && body.first() != Some(&b'd') {
            return Err(TrackerError::Status(status.as_u16()));
        }
        Ok(body)
    }
}

fn classify(e: reqwest::Error) -> TrackerError {
    // The URL is in the log line already; its query (binary info-hash) is noise.
    let e = &e.without_url();
    if e.is_timeout() {
        return TrackerError::Http(format!("timed out: {}", crate::error_text::error_chain(e)));
    }
    if e.is_redirect() {
        return TrackerError::Http(format!("more than {MAX_REDIRECTS} redirects"));
    }
    TrackerError::Http(crate::error_text::error_chain(e))
}
