//! Workers forked from a warm interpreter: one template process per pool imports the bridge and
//! the preloaded modules (DSPy, say) once, and forks each new worker from itself, so a worker is
//! ready in milliseconds instead of the second an import of DSPy costs, and shares the
//! template's memory until it writes to it.
//!
//! The pool talks to the template over a seqpacket socket (its fd 3; the messages are in the
//! bridge's `template.py`). For each worker the pool makes the four pipes, hands the child's ends
//! over with the fork request, and gets back a pidfd that the template opened before anything
//! could reap the child: signals through it reach that process and no other. The template keeps
//! an exited worker a zombie, so its PID and process group stay reserved, until the pool has
//! taken the exit status and releases it (see [`crate::process::Reaper`]).
//!
//! A template that cannot start is a failing start like any other (quoted stderr, backoff); one
//! that is unfit to fork (its preloads left threads or descriptors behind) makes the pool spawn
//! its workers the ordinary way, with a warning. Workers die with their template
//! (PR_SET_PDEATHSIG), as they die with the pool.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::json;

use crate::affinity;
use crate::fdpass;
use crate::output::{Output, TEMPLATE};
use crate::pool::{Event, EventSink};
use crate::process::{self, ProcessHandle, Reaper, SpawnSpec, WorkerPipes};

/// How long a template that fails to start keeps the next start from trying again: the slots
/// starting at the same moment share one failure instead of each paying the import.
const FAILURE_SHARED_FOR: Duration = Duration::from_millis(500);

/// The template of one pool, started when the first worker is needed.
pub struct Forker {
    spec: SpawnSpec,
    events: Arc<dyn EventSink>,
    state: Mutex<State>,
    starting: Starting,
}

/// A template still importing its preloads, for a pool that stops meanwhile to kill: a pool
/// that stops does not wait for a second of imports.
#[derive(Default)]
struct Starting {
    process: Mutex<Option<Arc<ProcessHandle>>>,
    closing: AtomicBool,
}

impl Starting {
    /// Under the lock that `close` takes after setting the flag: one of the two kills it.
    fn register(&self, process: &Arc<ProcessHandle>) {
        let mut starting = self.process.lock();
        *starting = Some(process.clone());
        if self.closing.load(Ordering::Acquire) {
            process.kill();
        }
    }

    fn done(&self) {
        *self.process.lock() = None;
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(process) = self.process.lock().as_ref() {
            process.kill();
        }
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

enum State {
    NotStarted,
    Running(Arc<Template>),
    /// Forking from it would be unsafe: workers are spawned instead.
    Unfit,
    Failed {
        why: String,
        at: Instant,
    },
    /// The pool is closing.
    Closed,
}

/// What a worker start gets from the forker.
pub enum Launch {
    Forked(process::WorkerProcess),
    /// No template to fork from: spawn the worker.
    Spawn,
}

impl Forker {
    /// `spec` runs the template (`--template` and the preloads are in its arguments).
    pub fn new(spec: SpawnSpec, events: Arc<dyn EventSink>) -> Forker {
        Forker {
            spec,
            events,
            state: Mutex::new(State::NotStarted),
            starting: Starting::default(),
        }
    }

    /// Forks worker `id`, starting the template first if there is none (or it died).
    pub fn launch(&self, id: usize, cpus: &[usize], deadline: Instant) -> Result<Launch, String> {
        let template = match self.template(id, deadline)? {
            Some(template) => template,
            None => return Ok(Launch::Spawn),
        };
        // A template that broke while forking was killed (see `Template::fork`): the next start
        // sees it gone and starts another. One whose fork merely failed stays.
        template.fork(id, cpus, deadline).map(Launch::Forked)
    }

    fn template(&self, id: usize, deadline: Instant) -> Result<Option<Arc<Template>>, String> {
        let mut state = self.state.lock();
        if self.starting.closing() {
            return Err(format!("worker {id}: the pool is stopping"));
        }
        match &*state {
            State::Running(t) if t.link.alive() => return Ok(Some(t.clone())),
            State::Unfit | State::Closed => return Ok(None),
            State::Failed { why, at } if at.elapsed() < FAILURE_SHARED_FOR => {
                return Err(format!("worker {id}: {why}"))
            }
            _ => {}
        }
        match Template::start(&self.spec, deadline, self.events.clone(), &self.starting) {
            Ok(Started::Fit(t)) => {
                *state = State::Running(t.clone());
                Ok(Some(t))
            }
            Ok(Started::Unfit(why)) => {
                self.events.event(Event::Warning {
                    slot: id,
                    message: format!(
                        "workers cannot be forked from a template: {why}; they are spawned \
                         one by one instead (each imports its modules itself)"
                    ),
                });
                *state = State::Unfit;
                Ok(None)
            }
            Err(why) => {
                let failed = format!("worker {id}: {why}");
                *state = State::Failed {
                    why,
                    at: Instant::now(),
                };
                Err(failed)
            }
        }
    }

    /// Starts no template from now on, and kills one still starting.
    pub fn begin_close(&self) {
        self.starting.close();
    }

    /// Ends the template (after the pool's workers are gone: it reports their exits).
    pub fn close(&self) {
        let old = std::mem::replace(&mut *self.state.lock(), State::Closed);
        if let State::Running(template) = old {
            template.close();
        }
    }
}

enum Started {
    Fit(Arc<Template>),
    Unfit(String),
}

struct Template {
    process: Arc<ProcessHandle>,
    /// Keeps the thread that spawned it alive: see [`spawn_on_own_thread`]. Declared after
    /// `process`, so the process is reaped before the thread ends.
    _parent: Sender<()>,
    link: Arc<Link>,
    replies: Receiver<Reply>,
    /// One fork at a time: replies come back in the order of the requests.
    forking: Mutex<()>,
    output: Output,
}

impl Template {
    fn start(
        spec: &SpawnSpec,
        deadline: Instant,
        events: Arc<dyn EventSink>,
        starting: &Starting,
    ) -> Result<Started, String> {
        let (ours, theirs) = fdpass::socket_pair().map_err(|e| format!("no socket: {e}"))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
        let (spawned, parent) = spawn_on_own_thread(spec, &theirs, &null).map_err(|e| {
            format!(
                "cannot start the template: {:?} failed to run: {e}",
                spec.program.to_string_lossy()
            )
        })?;
        drop(theirs);
        let process = Arc::new(spawned.handle);
        let output = Output::start(
            spawned.stdout,
            spawned.stderr,
            || process.exit_watch().ok(),
            TEMPLATE,
            events,
        );
        let link = Arc::new(Link::new(ours));
        let (tx, replies) = bounded(1);
        let reader = link.clone();
        std::thread::Builder::new()
            .name("dspex-np-template-in".into())
            .spawn(move || reader.read_messages(tx))
            .map_err(|e| format!("no thread for the template: {e}"))?;
        let template = Template {
            process,
            _parent: parent,
            link,
            replies,
            forking: Mutex::new(()),
            output,
        };
        starting.register(&template.process);
        let ready = template.reply(deadline);
        starting.done();
        match ready {
            Ok(Reply::Ready { unfit: None }) => Ok(Started::Fit(Arc::new(template))),
            Ok(Reply::Ready { unfit: Some(why) }) => {
                template.close();
                Ok(Started::Unfit(why))
            }
            Ok(Reply::NotReady(why)) => Err(template.fail(&format!("the template failed: {why}"))),
            Ok(_) => Err(template.fail("the template answered out of turn")),
            // Which interpreter it was says the most when it left without a word.
            Err(why) => Err(template.fail(&format!(
                "{why} before it was ready (interpreter {:?})",
                spec.program.to_string_lossy()
            ))),
        }
    }

    fn reply(&self, deadline: Instant) -> Result<Reply, String> {
        match self.replies.recv_deadline(deadline) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => Err(
                "the template did not answer within startup_timeout (importing the \
                     preloaded modules counts against it)"
                    .into(),
            ),
            Err(RecvTimeoutError::Disconnected) => Err("the template exited".into()),
        }
    }

    fn fork(
        &self,
        id: usize,
        cpus: &[usize],
        deadline: Instant,
    ) -> Result<process::WorkerProcess, String> {
        let _one = self.forking.lock();
        let pipes =
            WorkerPipes::new().map_err(|e| format!("cannot make worker {id}'s pipes: {e}"))?;
        let request = json!({ "fork": id.to_string(), "cpus": cpus }).to_string();
        fdpass::send(&self.link.control, request.as_bytes(), &pipes.child_fds())
            .map_err(|e| format!("cannot ask the template for worker {id}: {e}"))?;
        match self.reply(deadline) {
            Ok(Reply::Forked {
                id: got,
                pid,
                pidfd,
            }) if got == id.to_string() => {
                let handle = ProcessHandle::forked(pid, pidfd, self.link.clone());
                Ok(pipes.into_worker(handle))
            }
            Ok(Reply::ForkFailed(why)) => {
                Err(format!("the template could not fork worker {id}: {why}"))
            }
            Ok(_) => Err(self.fail("the template answered out of turn")),
            Err(why) => Err(self.fail(&format!("forking worker {id}: {why}"))),
        }
    }

    /// Kills a template that failed, and says why with its stderr.
    fn fail(&self, why: &str) -> String {
        crate::start::kill_and_describe(&self.process, &self.output, why)
    }

    fn close(&self) {
        // After the releases sent before it, which it handles in order; it then exits by itself.
        let _ = fdpass::send(&self.link.control, br#"{"close":true}"#, &[]);
        self.process.terminate(Duration::from_millis(500));
    }
}

/// Spawns the template on a thread that lives until the returned sender is dropped. A process
/// gets SIGKILL when the thread that spawned it ends (PR_SET_PDEATHSIG): a slot thread ends
/// with its last worker, before the template has reported the other workers' exits. The
/// thread may run on every CPU the pool's process may, whatever slot asked for it.
fn spawn_on_own_thread(
    spec: &SpawnSpec,
    control: &OwnedFd,
    null: &std::fs::File,
) -> std::io::Result<(process::Spawned, Sender<()>)> {
    let (keep, until_dropped) = bounded::<()>(0);
    let (tx, spawned) = bounded(1);
    let (spec, control, null) = (spec.clone(), control.as_raw_fd(), null.as_raw_fd());
    std::thread::Builder::new()
        .name("dspex-np-template".into())
        .spawn(move || {
            if let Ok(cpus) = affinity::allowed_cpus() {
                let _ = affinity::pin_to(0, &cpus);
            }
            // The descriptors stay open: the caller waits for this answer before closing them.
            let _ = tx.send(process::spawn_with_fds(&spec, control, null));
            let _ = until_dropped.recv();
        })?;
    let spawned = spawned
        .recv()
        .map_err(|_| std::io::Error::other("the template's thread ended"))??;
    Ok((spawned, keep))
}

mod link;
use link::{Link, Reply};
