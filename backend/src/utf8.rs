//! Turns a byte stream into text chunks for output events without ever
//! splitting a multi-byte character across two events. Invalid bytes become
//! U+FFFD, as the protocol carries text.

use std::borrow::Cow;

#[derive(Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `bytes` (after whatever was carried from the previous call).
    /// A character cut at the end is kept for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.decode(bytes).into_owned()
    }

    /// [`push`](Self::push) without a copy in the common case (nothing
    /// carried, nothing invalid): the text is `bytes` itself, up to a
    /// character cut at the end. Output is the bulk of what the helper
    /// moves, and is framed straight from this.
    pub fn decode<'a>(&mut self, bytes: &'a [u8]) -> Cow<'a, str> {
        if self.carry.is_empty() {
            match std::str::from_utf8(bytes) {
                Ok(s) => return Cow::Borrowed(s),
                Err(e) if e.error_len().is_none() => {
                    let (good, cut) = bytes.split_at(e.valid_up_to());
                    self.carry = cut.to_vec();
                    // `good` was just validated.
                    return Cow::Borrowed(std::str::from_utf8(good).unwrap_or_default());
                }
                Err(_) => {}
            }
        }
        Cow::Owned(self.decode_slow(bytes))
    }

    fn decode_slow(&mut self, bytes: &[u8]) -> String {
        let joined;
        let mut rest: &[u8] = if self.carry.is_empty() {
            bytes
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(bytes);
            joined = buf;
            &joined
        };
        let mut out = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return out;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` was just validated; this re-check only runs on
                    // the rare invalid path.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still carried at end of stream, as replacement characters.
    pub fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            String::new()
        } else {
            self.carry.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_character_is_joined() {
        let s = "héllo €".as_bytes();
        let mut d = Utf8Stream::default();
        let mut out = String::new();
        for b in s {
            out += &d.push(std::slice::from_ref(b));
        }
        out += &d.finish();
        assert_eq!(out, "héllo €");
    }

    #[test]
    fn decode_borrows_unless_it_must_copy() {
        let mut d = Utf8Stream::default();
        assert!(matches!(d.decode(b"plain\n"), Cow::Borrowed("plain\n")));
        // A cut character: the prefix is borrowed, the rest carried.
        let euro = "€".as_bytes();
        assert!(matches!(
            d.decode(&[b'a', euro[0], euro[1]]),
            Cow::Borrowed("a")
        ));
        assert_eq!(d.decode(&euro[2..]), "€");
        assert!(matches!(d.decode(b"a\xffb"), Cow::Owned(_)));
        // Byte by byte, every path joins to the same text.
        let s = "x€y\u{1F600}z".as_bytes();
        let mut out = String::new();
        for b in s {
            out += &d.decode(std::slice::from_ref(b));
        }
        assert_eq!(out, "x€y\u{1F600}z");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(d.push(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
