//! JSON text to Erlang terms, straight from the parser: a reply becomes the caller's message
//! without an intermediate value tree. Keys become strings only: no atom is ever created from
//! worker data.

use std::fmt;

use dspex_pool_core::protocol::MAX_DECODE_DEPTH;
use rustler::{Encoder, Env, ResourceArc, Term};

use crate::fast_reply::SharedFrame;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

rustler::atoms! {
    nil,
}

const TOO_DEEP: &str = "nested too deeply";

/// Whether a decoding error is the depth limit rather than malformed JSON.
pub fn is_too_deep(e: &serde_json::Error) -> bool {
    e.to_string().starts_with(TOO_DEEP)
}

/// Builds a term straight from JSON text.
#[derive(Clone, Copy)]
pub struct TermSeed<'a> {
    env: Env<'a>,
    depth: usize,
}

impl<'a> TermSeed<'a> {
    fn nested(self) -> Self {
        TermSeed {
            env: self.env,
            depth: self.depth + 1,
        }
    }
}

impl<'de, 'a> DeserializeSeed<'de> for TermSeed<'a> {
    type Value = Term<'a>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Term<'a>, D::Error> {
        if self.depth > MAX_DECODE_DEPTH {
            return Err(de::Error::custom(TOO_DEEP));
        }
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for TermSeed<'a> {
    type Value = Term<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Term<'a>, E> {
        Ok(v.encode(self.env))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Term<'a>, E> {
        Ok(v.encode(self.env))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Term<'a>, E> {
        Ok(v.encode(self.env))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Term<'a>, E> {
        Ok(v.encode(self.env))
    }
    fn visit_str<E>(self, v: &str) -> Result<Term<'a>, E> {
        Ok(v.encode(self.env))
    }
    fn visit_unit<E>(self) -> Result<Term<'a>, E> {
        Ok(nil().encode(self.env))
    }
    fn visit_none<E>(self) -> Result<Term<'a>, E> {
        Ok(nil().encode(self.env))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Term<'a>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self.nested())? {
            items.push(item);
        }
        Ok(items.encode(self.env))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Term<'a>, A::Error> {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            keys.push(key.as_ref().encode(self.env));
            values.push(map.next_value_seed(self.nested())?);
        }
        build_map(self.env, keys, values).map_err(de::Error::custom)
    }
}

/// Largest map built in one call to `enif_make_map_from_arrays`. Above 128 keys, OTP 25 sorts
/// the keys' hashes with a routine that crashes the VM (SIGSEGV in `erts_qsort`) when the map
/// is built, as here, in a process-independent environment on a thread of our own. Larger maps
/// are grown from such a map one key at a time, which never takes that path.
const MAX_MAP_FROM_ARRAYS: usize = 32;

/// A map from decoded keys and values; for duplicate keys the last one wins, as in Python's json.
pub(crate) fn build_map<'a>(
    env: Env<'a>,
    keys: Vec<Term<'a>>,
    values: Vec<Term<'a>>,
) -> Result<Term<'a>, &'static str> {
    if keys.len() <= MAX_MAP_FROM_ARRAYS {
        if let Ok(map) = Term::map_from_term_arrays(env, &keys, &values) {
            return Ok(map);
        }
    }
    let mut map = Term::map_new(env);
    for (key, value) in keys.into_iter().zip(values) {
        map = map.map_put(key, value).map_err(|_| "cannot build map")?;
    }
    Ok(map)
}

/// A reply, decoded: its id, and the result or error as terms.
pub struct DecodedReply<'a> {
    pub id: u64,
    pub success: bool,
    pub payload: Term<'a>,
}

struct ReplySeed<'a>(Env<'a>);

impl<'de, 'a> Visitor<'de> for ReplySeed<'a> {
    type Value = DecodedReply<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reply object with id, success and result or error")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut success, mut payload) = (None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => id = Some(map.next_value::<u64>()?),
                "success" => success = Some(map.next_value::<bool>()?),
                "result" | "error" => {
                    payload = Some(map.next_value_seed(TermSeed {
                        env: self.0,
                        depth: 1,
                    })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(DecodedReply {
            id: id.ok_or_else(|| de::Error::missing_field("id"))?,
            success: success.ok_or_else(|| de::Error::missing_field("success"))?,
            payload: payload.unwrap_or_else(|| nil().encode(self.0)),
        })
    }
}

/// A reply decoded; `shared`: the frame `body` is, when a large string may be shared out of it
/// (see [`crate::fast_reply::SharedFrame`]).
pub fn decode_reply<'a>(
    env: Env<'a>,
    body: &[u8],
    shared: Option<&ResourceArc<SharedFrame>>,
) -> Result<DecodedReply<'a>, serde_json::Error> {
    if let Some(reply) = crate::fast_reply::decode(env, body, shared) {
        return Ok(reply);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    // Our own depth limit (TermSeed) applies instead, counted from the result.
    de.disable_recursion_limit();
    let reply = de::Deserializer::deserialize_map(&mut de, ReplySeed(env))?;
    de.end()?;
    Ok(reply)
}

/// Any JSON text as a term (a tool call's frame, say), with the same depth limit.
pub fn decode_value<'a>(env: Env<'a>, body: &[u8]) -> Result<Term<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    let term = TermSeed { env, depth: 0 }.deserialize(&mut de)?;
    de.end()?;
    Ok(term)
}
