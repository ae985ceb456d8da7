//! A bounded, non-recursive bencode scanner.
//!
//! It exists for two reasons. BEP 9 `ut_metadata` data messages put raw bytes *after* a
//! bencoded dictionary, so we must know exactly where the dictionary ends. And `bt_bencode`
//! parses recursively without a depth limit, so a peer sending a megabyte of `l` bytes could
//! overflow our stack; scanning first with a nesting cap makes every later parse safe.

use thiserror::Error;

/// Why a byte slice does not start with a well-formed bencoded value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScanError {
    /// The input ended before the value was complete.
    #[error("bencode value truncated")]
    Truncated,
    /// Lists/dictionaries are nested deeper than the allowed maximum.
    #[error("bencode nesting deeper than {max}")]
    TooDeep {
        /// The configured maximum depth.
        max: usize,
    },
    /// A byte at `offset` is not valid bencode at that position.
    #[error("invalid bencode at byte {offset}")]
    Invalid {
        /// Offset of the offending byte.
        offset: usize,
    },
}

/// Returns the length in bytes of the single bencoded value at the start of `buf`.
///
/// Validates integer syntax (no leading zeros, no `-0`), string lengths (checked against the
/// remaining input, so no overflow and no allocation), that dictionary keys are byte strings,
/// and that containers nest at most `max_depth` levels. Trailing bytes after the value are not
/// inspected. Runs in time linear in the value's length and constant stack space.
pub fn bencode_value_len(buf: &[u8], max_depth: usize) -> Result<usize, ScanError> {
    // One entry per open container: `true` for a dictionary. For dictionaries we also track
    // whether the next item is a key (`expect_key`), which is only relevant for the innermost.
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut pos = 0usize;
    loop {
        let b = *buf.get(pos).ok_or(ScanError::Truncated)?;
        // Closing a container.
        if b == b'e' {
            match stack.pop() {
                Some((is_dict, expect_key)) => {
                    if is_dict && !expect_key {
                        // A key without a value.
                        return Err(ScanError::Invalid { offset: pos });
                    }
                    pos += 1;
                    if let Some(done) = after_value(&mut stack, pos) {
                        return Ok(done);
                    }
                    continue;
                }
                None => return Err(ScanError::Invalid { offset: pos }),
            }
        }
        let in_key_position = matches!(stack.last(), Some((true, true)));
        if in_key_position && !b.is_ascii_digit() {
            return Err(ScanError::Invalid { offset: pos });
        }
        match b {
            b'i' => {
                pos = scan_int(buf, pos + 1, b'e')?;
            }
            b'0'..=b'9' => {
                let (len, colon_end) = scan_str_len(buf, pos)?;
                let end = colon_end.checked_add(len).ok_or(ScanError::Truncated)?;
                if end > buf.len() {
                    return Err(ScanError::Truncated);
                }
                pos = end;
            }
            b'l' | b'd' => {
                if stack.len() >= max_depth {
                    return Err(ScanError::TooDeep { max: max_depth });
                }
                stack.push((b == b'd', true));
                pos += 1;
                continue;
            }
            _ => return Err(ScanError::Invalid { offset: pos }),
        }
        if let Some(done) = after_value(&mut stack, pos) {
            return Ok(done);
        }
    }
}

/// Bookkeeping after a complete value ending at `pos`: flips the key/value expectation of the
/// innermost dictionary, or reports the total length when the top-level value is complete.
fn after_value(stack: &mut [(bool, bool)], pos: usize) -> Option<usize> {
    match stack.last_mut() {
        None => Some(pos),
        Some((is_dict, expect_key)) => {
            if *is_dict {
                *expect_key = !*expect_key;
            }
            None
        }
    }
}

/// Scans an integer body starting at `start` (just after `i`) up to `terminator`; returns the
/// position after the terminator.
fn scan_int(buf: &[u8], start: usize, terminator: u8) -> Result<usize, ScanError> {
    let mut pos = start;
    let negative = buf.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let digits_start = pos;
    loop {
        let c = *buf.get(pos).ok_or(ScanError::Truncated)?;
        if c == terminator {
            break;
        }
        if !c.is_ascii_digit() {
            return Err(ScanError::Invalid { offset: pos });
        }
        pos += 1;
    }
    let digits = buf.get(digits_start..pos).ok_or(ScanError::Truncated)?;
    match digits {
        [] => return Err(ScanError::Invalid { offset: pos }),
        [b'0', _, ..] => {
            return Err(ScanError::Invalid {
                offset: digits_start,
            })
        }
        [b'0'] if negative => {
            return Err(ScanError::Invalid {
                offset: digits_start,
            })
        }
        _ => {}
    }
    Ok(pos + 1)
}

/// Parses a byte-string length prefix at `start`; returns `(length, position after ':')`.
fn scan_str_len(buf: &[u8], start: usize) -> Result<(usize, usize), ScanError> {
    let mut pos = start;
    let mut len: usize = 0;
    loop {
        let c = *buf.get(pos).ok_or(ScanError::Truncated)?;
        if c == b':' {
            break;
        }
        if !c.is_ascii_digit() {
            return Err(ScanError::Invalid { offset: pos });
        }
        if pos > start && buf.get(start) == Some(&b'0') {
            // Leading zero in a length.
            return Err(ScanError::Invalid { offset: start });
        }
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(c - b'0')))
            .ok_or(ScanError::Invalid { offset: pos })?;
        pos += 1;
    }
    if pos == start {
        return Err(ScanError::Invalid { offset: pos });
    }
    Ok((len, pos + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_values() {
        assert_eq!(bencode_value_len(b"i42e", 8), Ok(4));
        assert_eq!(bencode_value_len(b"i-7etrailing", 8), Ok(4));
        assert_eq!(bencode_value_len(b"i0e", 8), Ok(3));
        assert_eq!(bencode_value_len(b"4:spamXX", 8), Ok(6));
        assert_eq!(bencode_value_len(b"0:", 8), Ok(2));
    }

    #[test]
    fn containers() {
        let d = b"d8:msg_typei1e5:piecei0e10:total_sizei3425eeRAW";
        assert_eq!(bencode_value_len(d, 8), Ok(d.len() - 3));
        assert_eq!(bencode_value_len(b"le", 8), Ok(2));
        assert_eq!(bencode_value_len(b"de", 8), Ok(2));
        assert_eq!(bencode_value_len(b"ll4:spamei1ed1:ai2eeeXX", 8), Ok(21));
        assert_eq!(bencode_value_len(b"ll4:spamei1eed1:ai2eee", 8), Ok(13));
    }

    #[test]
    fn invalid_values() {
        assert!(matches!(
            bencode_value_len(b"i01e", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"i-0e", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"ie", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"i1x", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"01:a", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"di1ei2ee", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"d1:ae", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"e", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"x", 8),
            Err(ScanError::Invalid { .. })
        ));
        assert!(matches!(
            bencode_value_len(b"99999999999999999999999999:", 8),
            Err(ScanError::Invalid { .. })
        ));
    }

    #[test]
    fn truncated_values() {
        for input in [
            &b""[..],
            b"i12",
            b"4:spa",
            b"l",
            b"d1:a",
            b"18446744073709551615:x",
        ] {
            assert_eq!(
                bencode_value_len(input, 8),
                Err(ScanError::Truncated),
                "{input:?}"
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = vec![b'l'; 1_000_000];
        assert_eq!(
            bencode_value_len(&deep, 16),
            Err(ScanError::TooDeep { max: 16 })
        );
        let mut ok = vec![b'l'; 16];
        ok.extend(vec![b'e'; 16]);
        assert_eq!(bencode_value_len(&ok, 16), Ok(32));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_agrees_with_bt_bencode(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"idle:-0123456789xa".to_vec()), 0..64),
        ) {
            let scanned = bencode_value_len(&bytes, 64);
            if let Ok(n) = scanned {
                proptest::prop_assert!(n <= bytes.len());
            }
            // Whatever bt_bencode accepts as a whole, the scanner measures as a whole.
            if bt_bencode::from_slice::<bt_bencode::Value>(&bytes).is_ok() {
                proptest::prop_assert_eq!(scanned, Ok(bytes.len()));
            }
        }
    }
}
