//! The pool's own design without the BEAM: one thread per worker takes requests from a shared
//! queue, does the round trip and hands the reply back to the client that is waiting for it. A
//! busy worker thread goes from one request to the next without sleeping; each client is woken
//! once per request.

use std::io;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::workers::{Worker, REQUEST_TIMEOUT};

type Reply = io::Result<Vec<u8>>;

struct Job {
    request: Vec<u8>,
    reply: Sender<Reply>,
}

pub struct Dispatch {
    queue: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

thread_local! {
    /// Each client thread waits on its own reply slot, made once.
    static REPLY_SLOT: (Sender<Reply>, Receiver<Reply>) = bounded(1);
}

impl Dispatch {
    pub fn new(workers: Vec<Worker>, queue_len: usize) -> Dispatch {
        let (queue, jobs) = bounded::<Job>(queue_len.max(1));
        let threads = workers
            .into_iter()
            .map(|worker| {
                let jobs = jobs.clone();
                std::thread::spawn(move || serve(worker, jobs))
            })
            .collect();
        Dispatch { queue, threads }
    }

    pub fn call(&self, request: Vec<u8>) -> Reply {
        REPLY_SLOT.with(|(reply, replies)| {
            let job = Job {
                request,
                reply: reply.clone(),
            };
            self.queue
                .send(job)
                .map_err(|_| io::Error::other("dispatch closed"))?;
            replies
                .recv()
                .map_err(|_| io::Error::other("worker thread gone"))?
        })
    }

    /// Ends the worker threads, which drops the pipes so the bridges see EOF.
    pub fn close(self) {
        drop(self.queue);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(mut worker: Worker, jobs: Receiver<Job>) {
    if let Some(cpu) = worker.cpu {
        // As the pool's slot thread: on its worker's CPU.
        let _ = dspex_pool_core::affinity::pin_current_thread(cpu);
    }
    for job in jobs {
        // Handing the reply to another thread needs a copy of its own.
        let reply = worker
            .round_trip(&job.request, Instant::now() + REQUEST_TIMEOUT)
            .map(<[u8]>::to_vec);
        let failed = reply.is_err();
        let _ = job.reply.send(reply);
        if failed {
            return;
        }
    }
}
