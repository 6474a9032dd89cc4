//! Command line of `raw_limit`. Hand-parsed: the benchmark harness is its only user, and a
//! parser crate would be the largest thing in this binary.

use std::time::Duration;

use crate::sharing::Handoff;

pub const USAGE: &str = "usage: raw_limit [--python PATH] [--script PATH] [--workers N] \
[--clients N] [--payload BYTES] [--warmup-ms MS] [--duration-ms MS] [--handoff barging|fifo|dispatch] \
[--pin-cpus true|false] [--bridge-alone true|false]";

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The Python interpreter, as the pools are given it.
    pub python: String,
    /// The bridge's entry point, `priv/python/dspex_worker.py`.
    pub script: String,
    pub workers: usize,
    pub clients: usize,
    /// Length of the echoed string, in bytes.
    pub payload: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// How client threads share workers (see `checkout`).
    pub handoff: Handoff,
    /// Pin as the pool does by default (see `workers`).
    pub pin_cpus: bool,
    /// Measure the bridge alone on pre-written frames (see `alone`).
    pub bridge_alone: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            python: default_python(),
            script: "priv/python/dspex_worker.py".into(),
            workers: 1,
            clients: 1,
            payload: 100,
            warmup: Duration::from_millis(500),
            duration: Duration::from_millis(2000),
            handoff: Handoff::Barging,
            pin_cpus: true,
            bridge_alone: false,
        }
    }
}

/// Same choice as the Elixir pool: DSPEX_PYTHON, else bin/setup's virtualenv, else python3.
fn default_python() -> String {
    if let Ok(python) = std::env::var("DSPEX_PYTHON") {
        return python;
    }
    if std::path::Path::new(".venv/bin/python").exists() {
        return ".venv/bin/python".into();
    }
    "python3".into()
}

pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    let mut argv = argv.into_iter();
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--python" => args.python = value()?,
            "--script" => args.script = value()?,
            "--workers" => args.workers = number(&flag, &value()?)?,
            "--clients" => args.clients = number(&flag, &value()?)?,
            "--payload" => args.payload = number(&flag, &value()?)?,
            "--warmup-ms" => args.warmup = Duration::from_millis(number(&flag, &value()?)? as u64),
            "--duration-ms" => {
                args.duration = Duration::from_millis(number(&flag, &value()?)? as u64)
            }
            "--handoff" => {
                let text = value()?;
                args.handoff = Handoff::parse(&text).ok_or_else(|| {
                    format!("--handoff is barging, fifo or dispatch, got {text:?}")
                })?;
            }
            "--pin-cpus" => args.pin_cpus = boolean(&flag, &value()?)?,
            "--bridge-alone" => args.bridge_alone = boolean(&flag, &value()?)?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.workers == 0 || args.clients == 0 || args.duration.is_zero() {
        return Err("--workers, --clients and --duration-ms must be positive".into());
    }
    Ok(args)
}

fn boolean(flag: &str, text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{flag} is true or false, got {text:?}")),
    }
}

fn number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{flag} expects a whole number, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_flag() {
        let args = parse(argv(
            "--python py --script s.py --workers 2 --clients 16 --payload 10240 \
             --warmup-ms 100 --duration-ms 900 --handoff dispatch",
        ))
        .unwrap();
        assert_eq!(args.python, "py");
        assert_eq!(args.script, "s.py");
        assert_eq!((args.workers, args.clients, args.payload), (2, 16, 10240));
        assert_eq!(args.warmup, Duration::from_millis(100));
        assert_eq!(args.duration, Duration::from_millis(900));
        assert_eq!(args.handoff, Handoff::Dispatch);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(argv("--workers")).is_err());
        assert!(parse(argv("--workers two")).is_err());
        assert!(parse(argv("--clients 0")).is_err());
        assert!(parse(argv("--frobnicate 1")).is_err());
        assert!(parse(argv("--handoff lifo")).is_err());
        assert!(parse(argv("--bridge-alone yes")).is_err());
    }
}
