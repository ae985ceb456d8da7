//! A bounded bencode *scanner*: finds where values start and end without decoding them.
//!
//! Why not just decode? Two reasons. The info-hash is the SHA-1 of the info dictionary's
//! bytes exactly as they appear in the file; re-encoding a decoded value changes them when the
//! input is not canonical (unsorted keys, for instance), giving the wrong hash. And a decoder
//! that recurses can be crashed by `llll...` nesting; this scanner is iterative with an
//! explicit depth limit, and we run it over untrusted input before handing it to a decoder.
//! It also serves BEP 9 `ut_metadata` messages, where a bencoded dict is followed by raw bytes.

use std::ops::Range;

/// Deepest nesting accepted. Real metainfo needs about 5 levels.
pub const MAX_DEPTH: usize = 64;

/// Why some bytes are not (acceptable) bencode; `at` is the byte offset of the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// The input ended in the middle of a value.
    #[error("bencode truncated at byte {at}")]
    Eof {
        /// Offset where more input was needed.
        at: usize,
    },
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte 0x{byte:02x} at offset {at} in bencode")]
    Unexpected {
        /// Offending byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// An integer (`i...e`) with no digits, or with stray characters.
    #[error("malformed bencode integer at byte {at}")]
    BadInteger {
        /// Offset of the `i`.
        at: usize,
    },
    /// A byte-string length that is malformed or longer than the remaining input.
    #[error("bad bencode string length at byte {at}")]
    BadLength {
        /// Offset of the length prefix.
        at: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("bencode dictionary key at byte {at} is not a string")]
    KeyNotString {
        /// Offset of the key.
        at: usize,
    },
    /// A dictionary ended after a key, with no value.
    #[error("bencode dictionary key without value at byte {at}")]
    MissingValue {
        /// Offset of the closing `e`.
        at: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("bencode nested deeper than {MAX_DEPTH} levels at byte {at}")]
    TooDeep {
        /// Offset of the container that went too deep.
        at: usize,
    },
    /// Bytes left over after the top-level value.
    #[error("trailing data after bencode value at byte {at}")]
    Trailing {
        /// Offset of the first extra byte.
        at: usize,
    },
}

fn byte_at(buf: &[u8], at: usize) -> Result<u8, BencodeError> {
    buf.get(at).copied().ok_or(BencodeError::Eof { at })
}

/// Scans the byte string starting at `start` (`<len>:<bytes>`); returns the content range.
pub fn scan_str(buf: &[u8], start: usize) -> Result<Range<usize>, BencodeError> {
    let mut pos = start;
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let c = byte_at(buf, pos)?;
        match c {
            b'0'..=b'9' => {
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(c - b'0')))
                    .ok_or(BencodeError::BadLength { at: start })?;
                digits += 1;
                pos += 1;
            }
            b':' if digits > 0 => break,
            _ => return Err(BencodeError::BadLength { at: start }),
        }
    }
    let content = pos + 1;
    let end = content
        .checked_add(len)
        .ok_or(BencodeError::BadLength { at: start })?;
    if end > buf.len() {
        return Err(BencodeError::BadLength { at: start });
    }
    Ok(content..end)
}

/// Scans the integer starting at `start` (`i<digits>e`); returns the offset just past it.
fn scan_int(buf: &[u8], start: usize) -> Result<usize, BencodeError> {
    let mut pos = start + 1;
    if byte_at(buf, pos)? == b'-' {
        pos += 1;
    }
    let first = pos;
    loop {
        let c = byte_at(buf, pos)?;
        match c {
            b'0'..=b'9' => pos += 1,
            b'e' if pos > first => return Ok(pos + 1),
            _ => return Err(BencodeError::BadInteger { at: start }),
        }
    }
}

enum Frame {
    List,
    Dict { expect_key: bool },
}

/// Scans one complete value starting at `start` and returns the offset just past its end.
///
/// Iterative, depth-limited and bounds-checked: it never panics and never recurses,
/// whatever the input.
pub fn value_end(buf: &[u8], start: usize) -> Result<usize, BencodeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut pos = start;
    loop {
        let c = byte_at(buf, pos)?;
        if c == b'e' && !stack.is_empty() {
            if let Some(Frame::Dict { expect_key: false }) = stack.last() {
                return Err(BencodeError::MissingValue { at: pos });
            }
            stack.pop();
            pos += 1;
        } else {
            if let Some(Frame::Dict { expect_key: true }) = stack.last() {
                if !c.is_ascii_digit() {
                    return Err(BencodeError::KeyNotString { at: pos });
                }
            }
            match c {
                b'i' => pos = scan_int(buf, pos)?,
                b'0'..=b'9' => pos = scan_str(buf, pos)?.end,
                b'l' | b'd' => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(BencodeError::TooDeep { at: pos });
                    }
                    stack.push(if c == b'l' {
                        Frame::List
                    } else {
                        Frame::Dict { expect_key: true }
                    });
                    pos += 1;
                    continue;
                }
                _ => return Err(BencodeError::Unexpected { byte: c, at: pos }),
            }
        }
        // A value just completed: tell the enclosing container.
        match stack.last_mut() {
            None => return Ok(pos),
            Some(Frame::Dict { expect_key }) => *expect_key = !*expect_key,
            Some(Frame::List) => {}
        }
    }
}

/// Checks that `buf` is exactly one well-formed bencode value (no trailing bytes).
pub fn validate(buf: &[u8]) -> Result<(), BencodeError> {
    let end = value_end(buf, 0)?;
    if end != buf.len() {
        return Err(BencodeError::Trailing { at: end });
    }
    Ok(())
}

/// Where one entry of a dictionary sits in the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictEntry {
    /// Byte range of the key's content (without the length prefix).
    pub key: Range<usize>,
    /// Byte range of the whole encoded value.
    pub value: Range<usize>,
}

/// For a buffer holding one top-level dictionary, lists each key's raw bytes and the byte
/// range of its value, in input order (duplicates included). Validates the whole buffer.
pub fn dict_spans(buf: &[u8]) -> Result<Vec<DictEntry>, BencodeError> {
    validate(buf)?;
    match buf.first() {
        Some(b'd') => {}
        Some(&byte) => return Err(BencodeError::Unexpected { byte, at: 0 }),
        None => return Err(BencodeError::Eof { at: 0 }),
    }
    let mut out = Vec::new();
    let mut pos = 1;
    loop {
        if byte_at(buf, pos)? == b'e' {
            return Ok(out);
        }
        let key = scan_str(buf, pos)?;
        let vstart = key.end;
        let vend = value_end(buf, vstart)?;
        out.push(DictEntry {
            key,
            value: vstart..vend,
        });
        pos = vend;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_values() {
        assert_eq!(value_end(b"i42e", 0), Ok(4));
        assert_eq!(value_end(b"i-42exx", 0), Ok(5));
        assert_eq!(value_end(b"4:spam", 0), Ok(6));
        assert_eq!(value_end(b"0:", 0), Ok(2));
        assert_eq!(value_end(b"l4:spami3ee", 0), Ok(11));
        assert_eq!(value_end(b"d3:cow3:moo4:spamleeXYZ", 0), Ok(20));
        assert_eq!(validate(b"de"), Ok(()));
        assert_eq!(validate(b"dee"), Err(BencodeError::Trailing { at: 2 }));
    }

    #[test]
    fn rejects_malformed() {
        let bad: &[&[u8]] = &[
            b"",
            b"i",
            b"ie",
            b"i-e",
            b"i12",
            b"i1x2e",
            b"5:abc",
            b"99999999999999999999999:x",
            b"184467440737095516160:",
            b":",
            b"-1:",
            b"l",
            b"d",
            b"d3:abc",
            b"di1ei2ee",
            b"dlee1:x",
            b"d1:ae",
            b"x",
            b"e",
            b"l1:ae1",
            b"18446744073709551615:",
        ];
        for b in bad {
            assert!(validate(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        let mut deep = vec![b'l'; 1_000_000];
        deep.extend(vec![b'e'; 1_000_000]);
        assert!(matches!(validate(&deep), Err(BencodeError::TooDeep { .. })));
        let mut ok = vec![b'l'; MAX_DEPTH];
        ok.extend(vec![b'e'; MAX_DEPTH]);
        assert_eq!(validate(&ok), Ok(()));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let full = b"d4:infod4:name1:a6:lengthi5ee5:nodesll1:hi1eeee";
        assert_eq!(validate(full), Ok(()));
        for n in 0..full.len() {
            assert!(validate(&full[..n]).is_err());
        }
    }

    #[test]
    fn dict_spans_keep_input_order() {
        let buf = b"d1:bi1e1:a3:xyze";
        let spans = dict_spans(buf).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(&buf[spans[0].key.clone()], b"b");
        assert_eq!(&buf[spans[0].value.clone()], b"i1e");
        assert_eq!(&buf[spans[1].key.clone()], b"a");
        assert_eq!(&buf[spans[1].value.clone()], b"3:xyz");
        assert!(dict_spans(b"li1ee").is_err());
    }
}
