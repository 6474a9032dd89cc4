//! The JSON envelope around each frame.
//!
//! Request: `{"id":N,"command":"...","args":{...}}`; reply: `{"id":N,"success":true,"result":...}`
//! or `{"id":N,"success":false,"error":{"type":...,"message":...,"traceback":...}}`.
//! Arguments arrive already encoded as JSON, so the envelope is written around them by hand.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::frame;
use crate::request::{Failure, FailureKind};

/// Starts a request frame whose arguments the caller appends, then closes with [`finish_request`].
pub fn begin_request(id: u64, command: &str, capacity: usize) -> Vec<u8> {
    let mut buf = frame::frame_buffer(capacity + command.len() + 48);
    buf.extend_from_slice(b"{\"id\":");
    buf.extend_from_slice(id.to_string().as_bytes());
    buf.extend_from_slice(b",\"command\":");
    serde_json::to_writer(&mut buf, command).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(b",\"args\":");
    buf
}

/// Closes a request begun with [`begin_request`] and fills in its header.
pub fn finish_request(buf: Vec<u8>, max_frame: usize) -> Result<Vec<u8>, frame::FrameError> {
    finish_spliced_request(buf, 0, max_frame, 0)
}

/// [`finish_request`] for a frame that also holds `spliced` bytes of pieces kept elsewhere
/// (see [`frame::Splices`]) and whose reply may stream: `window` (above 0) is how many chunks
/// the worker may send ahead of the caller's credits.
pub fn finish_spliced_request(
    mut buf: Vec<u8>,
    spliced: usize,
    max_frame: usize,
    window: u32,
) -> Result<Vec<u8>, frame::FrameError> {
    if window > 0 {
        buf.extend_from_slice(b",\"stream\":");
        buf.extend_from_slice(window.to_string().as_bytes());
    }
    buf.push(b'}');
    frame::seal_spliced(&mut buf, spliced, max_frame)?;
    Ok(buf)
}

/// A whole request frame from already-encoded JSON arguments.
pub fn request(
    id: u64,
    command: &str,
    args_json: &[u8],
    max_frame: usize,
) -> Result<Vec<u8>, frame::FrameError> {
    let mut buf = begin_request(id, command, args_json.len());
    buf.extend_from_slice(args_json);
    finish_request(buf, max_frame)
}

/// Whether a string needs escaping inside JSON quotes: it holds a control byte, `"` or `\\`.
/// Checked at memory speed (see [`plain_run`]), so most text, and a megabyte payload, is then
/// copied as it is instead of going through an escape table byte by byte.
pub fn needs_escape(bytes: &[u8]) -> bool {
    plain_run(bytes) < bytes.len()
}

/// How many bytes from the start of a JSON string's text hold none of `"`, `\\` and control
/// characters: where a string without escapes ends. Each 64-byte block is folded into one flag
/// with no branch per byte, which the compiler turns into vector compares.
pub fn plain_run(bytes: &[u8]) -> usize {
    let flag = |b: u8| ((b < 0x20) | (b == b'"') | (b == b'\\')) as u8;
    let (blocks, _) = bytes.as_chunks::<64>();
    let clean = blocks
        .iter()
        .take_while(|block| block.iter().fold(0, |acc, &b| acc | flag(b)) == 0)
        .count();
    let run = clean * 64;
    run + bytes[run..]
        .iter()
        .position(|&b| flag(b) != 0)
        .unwrap_or(bytes.len() - run)
}

/// What the pool itself needs to know of a reply; the result stays undecoded.
#[derive(Debug, PartialEq)]
pub struct ReplyHead {
    pub id: u64,
    pub success: bool,
}

#[derive(Deserialize)]
struct RawHead {
    id: u64,
    success: bool,
    #[serde(default)]
    #[allow(dead_code)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    error: Option<IgnoredAny>,
}

/// Checks that `body` is a well-formed reply and returns its head.
pub fn reply_head(body: &[u8]) -> Result<ReplyHead, String> {
    match serde_json::from_slice::<RawHead>(body) {
        Ok(head) => Ok(ReplyHead {
            id: head.id,
            success: head.success,
        }),
        Err(e) => Err(describe_json_error(&e, body)),
    }
}

/// The `"id"` of a reply object, found without parsing (or recursing into) the rest: the
/// values next to it are skipped by counting brackets, so a reply nested far too deep to decode
/// can still be matched to its request. `None` if the body is not an object with a top-level
/// integer `"id"`.
pub fn peek_id(body: &[u8]) -> Option<u64> {
    let mut depth = 0usize;
    let mut i = 0;
    // At depth 1, whether the next string is a key (after `{` or `,`).
    let mut expect_key = false;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i + 1;
                i = string_end(body, start)?;
                if depth == 1 && expect_key && &body[start..i] == b"id" {
                    return id_value(&body[i + 1..]);
                }
                expect_key = false;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && body[i] == b'{';
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' => expect_key = depth == 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote closing a string whose text starts at `start`.
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `: 123` after a key.
fn id_value(rest: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(rest).ok()?.trim_start();
    let text = text.strip_prefix(':')?.trim_start();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// A short, safe description of a bad reply: the parser's words and the first bytes seen.
pub fn describe_json_error(err: &serde_json::Error, body: &[u8]) -> String {
    format!("{err}; reply began with {}", preview(body))
}

pub fn preview(body: &[u8]) -> String {
    let shown = &body[..body.len().min(60)];
    format!("{:?}", String::from_utf8_lossy(shown))
}

/// The result of a reply to a pool-internal request (init ping, health ping, replays).
pub fn reply_value(
    body: &[u8],
) -> Result<(u64, Result<serde_json::Value, serde_json::Value>), String> {
    #[derive(Deserialize)]
    struct Full {
        id: u64,
        success: bool,
        #[serde(default)]
        result: serde_json::Value,
        #[serde(default)]
        error: serde_json::Value,
    }
    let full: Full = serde_json::from_slice(body).map_err(|e| describe_json_error(&e, body))?;
    Ok((
        full.id,
        if full.success {
            Ok(full.result)
        } else {
            Err(full.error)
        },
    ))
}

/// Deepest nesting a reply's result may have when it becomes a term: deep enough for anything
/// sent (requests stop at 128 levels), shallow enough that decoding cannot overflow the
/// worker thread's stack.
pub const MAX_DECODE_DEPTH: usize = 512;

/// Why a reply whose body did not decode failed its request. The id first: a frame that is not
/// this request's reply means the stream is out of step, whatever else is wrong with it, and
/// the worker must be replaced; a sound reply nested too deep leaves the worker in place.
pub fn undecodable_reply(
    body: &[u8],
    expected: u64,
    worker: usize,
    error: &serde_json::Error,
    too_deep: bool,
) -> Failure {
    match peek_id(body) {
        Some(got) if got != expected => wrong_reply_id(worker, got, expected),
        Some(_) if too_deep => Failure {
            kind: FailureKind::ResultTooDeep,
            message: format!("the result is nested deeper than {MAX_DECODE_DEPTH} levels"),
            worker: Some(worker),
        },
        _ => Failure {
            kind: FailureKind::InvalidReply,
            message: format!(
                "worker {worker} sent an invalid reply: {}",
                describe_json_error(error, body)
            ),
            worker: Some(worker),
        },
    }
}

/// A decoded reply must answer the request it was read for.
pub fn check_reply_id(got: u64, expected: u64, worker: usize) -> Result<(), Failure> {
    if got == expected {
        Ok(())
    } else {
        Err(wrong_reply_id(worker, got, expected))
    }
}

fn wrong_reply_id(worker: usize, got: u64, expected: u64) -> Failure {
    Failure {
        kind: FailureKind::WrongReplyId,
        message: format!("worker {worker} answered request {got} while running request {expected}"),
        worker: Some(worker),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_envelope() {
        let frame = request(7, "echo", br#"{"a":"\u00e9"}"#, 1000).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let v: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "command": "echo", "args": {"a": "é"}})
        );
    }

    #[test]
    fn command_names_are_escaped() {
        let frame = request(1, "a\"b\n", b"{}", 1000).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(v["command"], "a\"b\n");
    }

    #[test]
    fn plain_run_stops_at_the_first_quote_backslash_or_control_byte() {
        for len in [0, 1, 63, 64, 65, 200] {
            let mut text = vec![b'x'; len];
            assert_eq!(plain_run(&text), len);
            for stop in [b'"', b'\\', b'\n', 0, 0x1f] {
                text.push(stop);
                text.extend_from_slice(b"yy\"");
                assert_eq!(plain_run(&text), len, "{stop}");
                text.truncate(len);
            }
        }
        assert_eq!(plain_run("é\"".as_bytes()), 2);
        assert_eq!(plain_run(&[0x7f, 0x80, 0xff, b'"']), 3);
    }

    #[test]
    fn needs_escape_agrees_with_serde_json() {
        // Every byte value, at every position of a block and in the tail.
        for b in 0u8..=127 {
            for pos in 0..130 {
                let mut text = vec![b'a'; 130];
                text[pos] = b;
                let s = String::from_utf8(text).unwrap();
                let escaped = serde_json::to_string(&s).unwrap();
                assert_eq!(
                    needs_escape(s.as_bytes()),
                    escaped.len() != s.len() + 2,
                    "{b} at {pos}"
                );
            }
        }
        assert!(!needs_escape("naïve café — 日本語 🐍".as_bytes()));
        assert!(!needs_escape(b""));
    }

    #[test]
    fn reply_heads() {
        assert_eq!(
            reply_head(br#"{"id":3,"success":true,"result":[1,{"x":null}]}"#).unwrap(),
            ReplyHead {
                id: 3,
                success: true
            }
        );
        assert!(reply_head(br#"{"id":3,"success":true,"result":[1,}"#).is_err());
        assert!(reply_head(br#"{"success":true}"#).is_err());
        assert!(reply_head(b"\xff\xfe garbage")
            .unwrap_err()
            .contains("reply began with"));
    }

    #[test]
    fn peek_id_finds_the_top_level_id_only() {
        assert_eq!(peek_id(br#"{"id":42,"success":true}"#), Some(42));
        assert_eq!(
            peek_id(br#"{"success":true, "result":{"id":1}, "id" : 7}"#),
            Some(7)
        );
        assert_eq!(peek_id(br#"{"result":"\"id\":3","id":5}"#), Some(5));
        assert_eq!(peek_id(br#"{"result":["id",{"id":2}]}"#), None);
        assert_eq!(peek_id(br#"{"id":"9"}"#), None);
        assert_eq!(peek_id(b"garbage"), None);
        let deep = format!(
            r#"{{"result":{}1{},"id":11}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(peek_id(deep.as_bytes()), Some(11));
    }

    #[test]
    fn reply_values() {
        let (id, res) = reply_value(br#"{"id":9,"success":false,"error":{"type":"X"}}"#).unwrap();
        assert_eq!(id, 9);
        assert_eq!(res.unwrap_err()["type"], "X");
    }

    #[test]
    fn an_undecodable_reply_is_judged_by_its_id_first() {
        let error = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let other = undecodable_reply(br#"{"id":7,"success":tru"#, 8, 1, &error, true);
        assert_eq!(other.kind, FailureKind::WrongReplyId);
        let deep = undecodable_reply(br#"{"id":8,"success":true}"#, 8, 1, &error, true);
        assert_eq!(deep.kind, FailureKind::ResultTooDeep);
        let bad = undecodable_reply(b"garbage", 8, 1, &error, false);
        assert_eq!(bad.kind, FailureKind::InvalidReply);
        assert!(bad.message.contains("garbage"), "{}", bad.message);
        assert!(check_reply_id(8, 8, 1).is_ok());
        assert_eq!(
            check_reply_id(9, 8, 1).unwrap_err().kind,
            FailureKind::WrongReplyId
        );
    }
}
