//! Erlang terms to JSON text, without an intermediate value tree (the way back is in
//! `term_from_json`).
//!
//! Encoding accepts maps with atom or string keys, lists, UTF-8 binaries, 64-bit integers,
//! floats, `nil`/`true`/`false` and other atoms (as strings); anything else is refused with the
//! path to the offending value.

use dspex_pool_core::protocol;
use rustler::{Binary, Encoder, Term, TermType};

use crate::held_strings::{HeldStrings, HELD_MIN};

rustler::atoms! {
    __struct__,
}

/// Why a term cannot be encoded.
#[derive(Debug)]
pub enum EncodeError {
    /// Not representable as JSON; `path` locates it (`args.items[2]`).
    Invalid {
        path: Vec<PathPart>,
        message: String,
    },
    /// The output grew past the budget: encode again on a dirty scheduler.
    OverBudget,
}

#[derive(Debug, Clone)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

impl EncodeError {
    fn invalid(message: impl Into<String>) -> Self {
        EncodeError::Invalid {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn within(mut self, part: PathPart) -> Self {
        if let EncodeError::Invalid { path, .. } = &mut self {
            path.push(part);
        }
        self
    }

    /// "args.items[2]: a pid cannot be encoded as JSON"
    pub fn describe(&self, root: &str) -> String {
        match self {
            EncodeError::OverBudget => "over budget".to_string(),
            EncodeError::Invalid { path, message } => {
                let mut at = root.to_string();
                for part in path.iter().rev() {
                    match part {
                        PathPart::Key(k) => {
                            at.push('.');
                            at.push_str(k);
                        }
                        PathPart::Index(i) => at.push_str(&format!("[{i}]")),
                    }
                }
                format!("{at}: {message}")
            }
        }
    }
}

/// Appends the JSON text of `term` to `out`. With a `budget`, gives up once `out` would exceed it.
pub fn encode(term: Term, out: &mut Vec<u8>, budget: Option<usize>) -> Result<(), EncodeError> {
    let limit = budget.map(|b| out.len() + b);
    Encoding {
        out,
        limit,
        depth: 0,
        held: None,
    }
    .value(term)
}

/// [`encode`] with no budget, where each string of [`HELD_MIN`] bytes or more that needs no
/// escaping is held in `held` at its place in `out` instead of copied into it.
pub fn encode_holding(
    term: Term,
    out: &mut Vec<u8>,
    held: &mut HeldStrings,
) -> Result<(), EncodeError> {
    Encoding {
        out,
        limit: None,
        depth: 0,
        held: Some(held),
    }
    .value(term)
}

/// Deeper nesting is refused, so a hostile term cannot overflow a scheduler's stack. It matches
/// the decoder's limit, so whatever is sent can also come back.
pub const MAX_DEPTH: usize = 128;

struct Encoding<'o> {
    out: &'o mut Vec<u8>,
    limit: Option<usize>,
    depth: usize,
    held: Option<&'o mut HeldStrings>,
}

impl Encoding<'_> {
    fn check(&self, extra: usize) -> Result<(), EncodeError> {
        match self.limit {
            Some(limit) if self.out.len() + extra > limit => Err(EncodeError::OverBudget),
            _ => Ok(()),
        }
    }

    fn value(&mut self, term: Term) -> Result<(), EncodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(EncodeError::invalid(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        let result = self.dispatch(term);
        self.depth -= 1;
        result
    }

    fn dispatch(&mut self, term: Term) -> Result<(), EncodeError> {
        match term.get_type() {
            TermType::Atom => self.atom(term),
            TermType::Binary => self.string(term),
            TermType::Integer => self.integer(term),
            TermType::Float => {
                let f: f64 = term
                    .decode()
                    .map_err(|_| EncodeError::invalid("unreadable float"))?;
                serde_json::to_writer(&mut *self.out, &f)
                    .map_err(|e| EncodeError::invalid(e.to_string()))
            }
            TermType::List => self.list(term),
            TermType::Map => self.map(term),
            TermType::Tuple => Err(EncodeError::invalid(
                "a tuple cannot be encoded as JSON (use a list or a map)",
            )),
            TermType::Pid => Err(EncodeError::invalid("a pid cannot be encoded as JSON")),
            TermType::Port => Err(EncodeError::invalid("a port cannot be encoded as JSON")),
            TermType::Ref => Err(EncodeError::invalid(
                "a reference cannot be encoded as JSON",
            )),
            TermType::Fun => Err(EncodeError::invalid("a function cannot be encoded as JSON")),
            TermType::Unknown => Err(EncodeError::invalid("this term cannot be encoded as JSON")),
        }
    }

    fn atom(&mut self, term: Term) -> Result<(), EncodeError> {
        let name = atom_text(term)?;
        match name.as_str() {
            "nil" => self.out.extend_from_slice(b"null"),
            "true" => self.out.extend_from_slice(b"true"),
            "false" => self.out.extend_from_slice(b"false"),
            _ => self.text(&name)?,
        }
        Ok(())
    }

    fn text(&mut self, s: &str) -> Result<(), EncodeError> {
        self.check(s.len())?;
        // Room for the common case (nothing to escape), so a large string is copied once.
        self.out.reserve(s.len() + 2);
        if protocol::needs_escape(s.as_bytes()) {
            return serde_json::to_writer(&mut *self.out, s)
                .map_err(|e| EncodeError::invalid(e.to_string()));
        }
        self.out.push(b'"');
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    fn string(&mut self, term: Term) -> Result<(), EncodeError> {
        let bin = Binary::from_term(term).map_err(|_| {
            EncodeError::invalid(
                "a bitstring that is not a whole number of bytes cannot be encoded as JSON",
            )
        })?;
        self.check(bin.len())?;
        let s = std::str::from_utf8(bin.as_slice()).map_err(|e| {
            EncodeError::invalid(format!(
                "a binary that is not valid UTF-8 cannot be encoded as a JSON string (invalid byte at offset {}; Base64-encode binary data)",
                e.valid_up_to()
            ))
        })?;
        if let Some(held) = self.held.as_deref_mut() {
            if s.len() >= HELD_MIN && !protocol::needs_escape(s.as_bytes()) {
                self.out.push(b'"');
                held.hold(self.out.len(), term);
                self.out.push(b'"');
                return Ok(());
            }
        }
        self.text(s)
    }

    fn integer(&mut self, term: Term) -> Result<(), EncodeError> {
        if let Ok(i) = term.decode::<i64>() {
            self.out.extend_from_slice(i.to_string().as_bytes());
        } else if let Ok(u) = term.decode::<u64>() {
            self.out.extend_from_slice(u.to_string().as_bytes());
        } else {
            return Err(EncodeError::invalid(
                "an integer beyond 64 bits cannot be encoded (send it as a string)",
            ));
        }
        Ok(())
    }

    fn list(&mut self, mut term: Term) -> Result<(), EncodeError> {
        self.out.push(b'[');
        let mut index = 0;
        while !term.is_empty_list() {
            let (head, tail) = term
                .list_get_cell()
                .map_err(|_| EncodeError::invalid("an improper list cannot be encoded as JSON"))?;
            if index > 0 {
                self.out.push(b',');
            }
            self.value(head)
                .map_err(|e| e.within(PathPart::Index(index)))?;
            index += 1;
            term = tail;
        }
        self.out.push(b']');
        self.check(0)
    }

    fn map(&mut self, term: Term) -> Result<(), EncodeError> {
        let env = term.get_env();
        if term.map_get(__struct__().encode(env)).is_ok() {
            let name = term
                .map_get(__struct__().encode(env))
                .ok()
                .and_then(|m| m.atom_to_string().ok())
                .unwrap_or_default();
            let name = name.strip_prefix("Elixir.").unwrap_or(&name).to_string();
            return Err(EncodeError::invalid(format!(
                "a %{name}{{}} struct cannot be encoded as JSON (convert it to a plain map first, e.g. with Map.from_struct/1)"
            )));
        }
        let iter = rustler::types::map::MapIterator::new(term)
            .ok_or_else(|| EncodeError::invalid("unreadable map"))?;
        self.out.push(b'{');
        let (mut atom_keys, mut string_keys) = (false, false);
        for (n, (key, value)) in iter.enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            if key.is_atom() {
                atom_keys = true;
            } else {
                string_keys = true;
            }
            let name = key_name(key)?;
            self.text(&name)?;
            self.out.push(b':');
            self.value(value)
                .map_err(|e| e.within(PathPart::Key(name)))?;
        }
        self.out.push(b'}');
        // `a:` and `"a"` would both become the JSON key "a", and one value would be lost.
        if atom_keys && string_keys {
            refuse_duplicate_keys(term)?;
        }
        self.check(0)
    }
}

/// An atom's name. `enif_get_atom` only reads Latin-1 on OTP 25, so other atoms are read from
/// their external format (ATOM_UTF8_EXT or SMALL_ATOM_UTF8_EXT).
fn atom_text(term: Term) -> Result<String, EncodeError> {
    if let Ok(name) = term.atom_to_string() {
        return Ok(name);
    }
    let external = term.to_binary();
    let bytes = external.as_slice();
    let name = match bytes {
        [131, 118, hi, lo, rest @ ..] => rest.get(..u16::from_be_bytes([*hi, *lo]) as usize),
        [131, 119, len, rest @ ..] => rest.get(..*len as usize),
        _ => None,
    };
    name.and_then(|n| std::str::from_utf8(n).ok())
        .map(str::to_owned)
        .ok_or_else(|| EncodeError::invalid("unreadable atom"))
}

fn key_name(key: Term) -> Result<String, EncodeError> {
    match key.get_type() {
        TermType::Atom => atom_text(key),
        TermType::Binary => {
            let bin =
                Binary::from_term(key).map_err(|_| EncodeError::invalid("a bitstring map key"))?;
            std::str::from_utf8(bin.as_slice())
                .map(str::to_owned)
                .map_err(|_| EncodeError::invalid("a map key that is not valid UTF-8"))
        }
        _ => Err(EncodeError::invalid(format!(
            "map keys must be atoms or strings, got {key:?}"
        ))),
    }
}

fn refuse_duplicate_keys(map: Term) -> Result<(), EncodeError> {
    let mut seen = std::collections::HashSet::new();
    for (key, _) in rustler::types::map::MapIterator::new(map)
        .into_iter()
        .flatten()
    {
        let name = key_name(key)?;
        if !seen.insert(name.clone()) {
            return Err(EncodeError::invalid(format!(
                "the key {name:?} appears both as an atom and as a string; JSON would keep only one"
            )));
        }
    }
    Ok(())
}
