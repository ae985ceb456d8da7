//! One-line error text for the library's logs and failure reports: the error and its causes,
//! each once (what the CLI prints with anyhow's `{:#}`; the library does not depend on
//! anyhow). "connection refused" often sits several causes down, so the top message alone
//! says too little.

/// Causes followed at most: a cyclic or absurdly deep `source()` chain cannot loop forever.
const MAX_CAUSES: usize = 8;

/// `e: cause: cause…`, skipping a cause whose text the line already holds.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    for _ in 0..MAX_CAUSES {
        let Some(c) = src else { break };
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("announce failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "announce failed: connection refused");
    }
}
