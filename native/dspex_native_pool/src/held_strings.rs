//! Large strings of a request's arguments, kept alive in an environment of their own and
//! written to the worker from where they lie (see `dspex_pool_core::frame::Splices`), rather
//! than copied into the request's frame.

use rustler::{Binary, OwnedEnv, Term};

use dspex_pool_core::frame::Splices;

/// Strings shorter than this are copied into the frame: holding one saves nothing worth its
/// environment. Only arguments encoded on a dirty scheduler (over 64 KiB) hold any.
pub const HELD_MIN: usize = 64 * 1024;

pub struct HeldStrings {
    /// Holds a copy of each string: a reference to the same binary, not its bytes.
    env: OwnedEnv,
    /// Where each goes in the frame, and where its bytes lie.
    pieces: Vec<(usize, *const u8, usize)>,
}

// SAFETY: the pointers are to the bytes of binaries that `env` keeps alive, which never move
// and which nobody writes; the environment itself may move between threads.
unsafe impl Send for HeldStrings {}

impl HeldStrings {
    pub fn new() -> Self {
        HeldStrings {
            env: OwnedEnv::new(),
            pieces: Vec::new(),
        }
    }

    /// Holds `string` (a binary) for the place `at` in the frame.
    pub fn hold(&mut self, at: usize, string: Term) {
        let saved = self.env.save(string);
        let (bytes, len) = self.env.run(|env| {
            let binary = Binary::from_term(saved.load(env)).expect("a binary saved as one");
            (binary.as_slice().as_ptr(), binary.len())
        });
        self.pieces.push((at, bytes, len));
    }
}

impl Splices for HeldStrings {
    fn pieces(&self) -> Vec<(usize, &[u8])> {
        self.pieces
            .iter()
            // SAFETY: see `Send` above; the slices live no longer than `self`, nor its env.
            .map(|&(at, bytes, len)| (at, unsafe { std::slice::from_raw_parts(bytes, len) }))
            .collect()
    }

    fn len(&self) -> usize {
        self.pieces.iter().map(|&(_, _, len)| len).sum()
    }
}
