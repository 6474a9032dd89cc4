//! The common reply, `{"id":N,"success":true,"result":...}` as the bridge writes it, decoded
//! into terms by a parser of its own. serde_json scans a string for its end eight bytes at a
//! time and then checks its UTF-8 in a second pass; here one pass over 64-byte blocks, which the
//! compiler turns into vector compares, finds the end of a string, and ASCII text then needs no
//! check: in a 1 MB echo, decoding fell from 17.5% of the VM's CPU samples to 5.5% (perf).
//!
//! It gives up (`None`) on anything it does not expect, valid or not (an error reply, other
//! spacing, a number it would round differently), and the reply is then decoded by serde_json,
//! which also words the error of a reply that is not valid: this parser never has to be right
//! about what it refuses, only about what it accepts.

use dspex_pool_core::frame::LargeFrame;
use dspex_pool_core::protocol::{plain_run, MAX_DECODE_DEPTH};
use rustler::{Encoder, Env, Resource, ResourceArc, Term};

use crate::atoms::nil;
use crate::term_from_json::{build_map, DecodedReply};

/// A large reply's frame, kept whole as the memory of the one string in it that is most of it
/// (a 1 MB echo's text, say), which the caller then gets as a sub-binary with no copy: in a
/// 1 MB echo that copy was 29% of the reading thread's CPU samples (perf). Only a string of at
/// least [`SHARED_MIN`] bytes and three quarters of its frame is shared, in a buffer cut to the
/// frame's size, so a string kept keeps at most 4/3 of its size alive.
/// That memory is the pool's, not the VM's binary allocator's: `:erlang.memory(:binary)` and
/// `:binary.referenced_byte_size/1` do not count it, though garbage collection weighs it as
/// the binary it is, and frees it with the string.
pub struct SharedFrame(LargeFrame);

#[rustler::resource_impl]
impl Resource for SharedFrame {}

impl SharedFrame {
    /// The frame as a resource if it can hold a shared string, or back as it came.
    pub fn new(mut frame: LargeFrame) -> Result<ResourceArc<SharedFrame>, LargeFrame> {
        let len = frame.bytes().len();
        if len < SHARED_MIN {
            return Err(frame);
        }
        // A spare may have held a larger frame (or a request frame grown by doubling); giving
        // the excess back to the allocator shrinks the block in place, with no copy.
        frame.shrink_to_fit();
        Ok(ResourceArc::new(SharedFrame(frame)))
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Strings shorter than this are copied: a sub-binary saves nothing worth a resource.
const SHARED_MIN: usize = 64 * 1024;

const PREFIX: &[u8] = b"{\"id\":";
const SUCCESS: &[u8] = b",\"success\":true,\"result\":";

/// A success reply decoded, or `None` for serde_json to decode.
pub fn decode<'a>(
    env: Env<'a>,
    body: &[u8],
    shared: Option<&ResourceArc<SharedFrame>>,
) -> Option<DecodedReply<'a>> {
    let rest = body.strip_prefix(PREFIX)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let id = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let start = PREFIX.len() + digits + SUCCESS.len();
    if !rest[digits..].starts_with(SUCCESS) {
        return None;
    }
    let mut parser = Parser {
        env,
        bytes: body,
        at: start,
        shared,
    };
    let payload = parser.value(1)?;
    (parser.at + 1 == body.len() && body[parser.at] == b'}').then_some(DecodedReply {
        id,
        success: true,
        payload,
    })
}

struct Parser<'a, 'b> {
    env: Env<'a>,
    bytes: &'b [u8],
    at: usize,
    /// The frame `bytes` are, when a string may be shared out of it.
    shared: Option<&'b ResourceArc<SharedFrame>>,
}

impl<'a, 'b> Parser<'a, 'b> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Term<'a>> {
        if depth > MAX_DECODE_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string_value(),
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b't' => self.word(b"true", true.encode(self.env)),
            b'f' => self.word(b"false", false.encode(self.env)),
            b'n' => self.word(b"null", nil().encode(self.env)),
            _ => self.number(),
        }
    }

    fn word(&mut self, word: &[u8], term: Term<'a>) -> Option<Term<'a>> {
        self.bytes[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            term
        })
    }

    fn object(&mut self, depth: usize) -> Option<Term<'a>> {
        self.eat(b'{')?;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        if self.eat(b'}').is_none() {
            loop {
                let env = self.env;
                keys.push(self.string()?.encode(env));
                self.eat(b':')?;
                values.push(self.value(depth + 1)?);
                if self.eat(b',').is_none() {
                    self.eat(b'}')?;
                    break;
                }
            }
        }
        build_map(self.env, keys, values).ok()
    }

    fn array(&mut self, depth: usize) -> Option<Term<'a>> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        if self.eat(b']').is_none() {
            loop {
                items.push(self.value(depth + 1)?);
                if self.eat(b',').is_none() {
                    self.eat(b']')?;
                    break;
                }
            }
        }
        Some(items.encode(self.env))
    }

    /// A string value: a sub-binary of the shared frame when it is most of it, else a copy.
    fn string_value(&mut self) -> Option<Term<'a>> {
        let start = self.at + 1;
        let text = self.string()?;
        let len = text.len();
        match self.shared {
            Some(frame) if len >= SHARED_MIN && 4 * len >= 3 * self.bytes.len() => {
                let whole = frame.make_binary(self.env, |frame| frame.bytes());
                Some(whole.make_subbinary(start, len).ok()?.to_term(self.env))
            }
            _ => Some(text.encode(self.env)),
        }
    }

    /// A string with no escapes: the bridge writes non-ASCII text as UTF-8, not `\u` escapes,
    /// so only control characters, quotes and backslashes in the text send a string to serde.
    fn string(&mut self) -> Option<&'b str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = plain_run(&self.bytes[start..]);
        let end = start + len;
        if self.bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        let text: &'b [u8] = &self.bytes[start..end];
        if text.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(text) })
        } else {
            std::str::from_utf8(text).ok()
        }
    }

    /// A number as serde_json reads it: an integer as `i64` if negative, else `u64`; one with
    /// a fraction or an exponent as the nearest `f64`. An integer beyond 64 bits, `-0` (a
    /// float to serde) and a float beyond `f64` are left to serde.
    fn number(&mut self) -> Option<Term<'a>> {
        let start = self.at;
        let negative = self.eat(b'-').is_some();
        let int_digits = self.digits();
        let leading_zero = int_digits > 1 && self.bytes[self.at - int_digits] == b'0';
        if int_digits == 0 || leading_zero {
            return None;
        }
        let mut float = false;
        if self.eat(b'.').is_some() {
            float = true;
            (self.digits() > 0).then_some(())?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            float = true;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        // SAFETY: the bytes were matched as ASCII digits, signs, '.', 'e' and 'E'.
        let text = unsafe { std::str::from_utf8_unchecked(&self.bytes[start..self.at]) };
        let term = if float {
            let value = text.parse::<f64>().ok().filter(|v| v.is_finite())?;
            value.encode(self.env)
        } else if negative {
            let value = text.parse::<i64>().ok().filter(|&v| v != 0)?;
            value.encode(self.env)
        } else {
            text.parse::<u64>().ok()?.encode(self.env)
        };
        Some(term)
    }

    fn digits(&mut self) -> usize {
        let n = self.bytes[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.at += n;
        n
    }
}
