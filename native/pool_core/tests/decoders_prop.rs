//! Whatever bytes a worker writes, the frame reader and the reply decoder answer with a value or
//! an error: they never panic, never read past a frame, and never accept a frame over the cap.

use std::fs::File;
use std::io::Write;

use dspex_pool_core::frame::{frame_buffer, seal, FrameError, FrameReader};
use dspex_pool_core::{process, protocol};
use proptest::prelude::*;

fn pipe() -> (File, File) {
    let (r, w) = process::pipe().unwrap();
    (File::from(r), File::from(w))
}

/// Feeds `bytes` to a reader with cap `max` and collects every frame until the stream ends.
fn read_all(bytes: &[u8], max: usize) -> (Vec<Vec<u8>>, FrameError) {
    let (r, mut w) = pipe();
    let owned = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&owned);
    });
    let mut reader = FrameReader::new(r, max);
    let mut frames = Vec::new();
    let end = loop {
        match reader.read_frame(None) {
            Ok(frame) => frames.push(frame.to_vec()),
            Err(e) => break e,
        }
    };
    writer.join().unwrap();
    (frames, end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_reader_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 0usize..600) {
        let (frames, end) = read_all(&bytes, max);
        let consumed: usize = frames.iter().map(|f| f.len() + 4).sum();
        prop_assert!(consumed <= bytes.len());
        prop_assert!(frames.iter().all(|f| f.len() <= max));
        match end {
            FrameError::Eof => prop_assert_eq!(consumed, bytes.len()),
            FrameError::Truncated { .. } => prop_assert!(consumed < bytes.len()),
            FrameError::TooLarge { len, max: m } => prop_assert!(len > m),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn sealed_frames_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
        let mut stream = Vec::new();
        for body in &bodies {
            let mut buf = frame_buffer(body.len());
            buf.extend_from_slice(body);
            seal(&mut buf, 300).unwrap();
            stream.extend(buf);
        }
        let (frames, end) = read_all(&stream, 300);
        prop_assert_eq!(frames, bodies);
        prop_assert!(matches!(end, FrameError::Eof));
    }

    #[test]
    fn reply_decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = protocol::reply_head(&bytes);
        let _ = protocol::reply_value(&bytes);
    }

    #[test]
    fn reply_decoder_survives_mangled_replies(id in any::<u64>(), cut in 0usize..64, junk in any::<u8>()) {
        let good = format!(r#"{{"id":{id},"success":true,"result":{{"a":[1,2.5,null,"x"]}}}}"#).into_bytes();
        prop_assert_eq!(protocol::reply_head(&good).unwrap().id, id);
        let mut bad = good.clone();
        let at = cut.min(bad.len() - 1);
        bad[at] = junk;
        // A byte changed inside a string or a number can leave a valid reply; unless it was a
        // digit of the id, the id read is still the one sent.
        let id_digits = 6..6 + id.to_string().len();
        if let Ok(head) = protocol::reply_head(&bad) {
            if !id_digits.contains(&at) {
                prop_assert_eq!(head.id, id);
            }
        }
        prop_assert!(protocol::reply_head(&good[..at]).is_err());
    }
}
