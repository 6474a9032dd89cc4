//! Environments for requests, reused. A request's environment was allocated on the caller's
//! scheduler and freed by the worker's thread once the reply was sent, so every request handed
//! memory back to another thread's allocator. Cleared environments now go back to a short list
//! and the next request takes one from it.

use std::ops::{Deref, DerefMut};

use dspex_pool_core::spares::Spares;
use rustler::OwnedEnv;

/// Enough for every request in flight on a busy machine; beyond it, environments are freed.
const MAX_SPARE: usize = 1024;

static SPARE: Spares<OwnedEnv> = Spares::new(MAX_SPARE);

/// An environment that goes back to the spare list, cleared, when dropped.
pub struct SpareEnv(Option<OwnedEnv>);

impl SpareEnv {
    pub fn take() -> SpareEnv {
        SpareEnv(Some(SPARE.take().unwrap_or_default()))
    }
}

impl Deref for SpareEnv {
    type Target = OwnedEnv;

    fn deref(&self) -> &OwnedEnv {
        self.0.as_ref().expect("present until dropped")
    }
}

impl DerefMut for SpareEnv {
    fn deref_mut(&mut self) -> &mut OwnedEnv {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for SpareEnv {
    fn drop(&mut self) {
        let Some(mut env) = self.0.take() else { return };
        // A request dropped unanswered still holds its tag.
        env.clear();
        SPARE.give_back(env);
    }
}
