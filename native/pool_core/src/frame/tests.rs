use super::*;
use std::io::Read;
use std::time::Duration;

fn pipe() -> (File, File) {
    let (r, w) = crate::process::pipe().unwrap();
    (File::from(r), File::from(w))
}

fn sealed(body: &[u8]) -> Vec<u8> {
    let mut buf = frame_buffer(body.len());
    buf.extend_from_slice(body);
    seal(&mut buf, usize::MAX).unwrap();
    buf
}

#[test]
fn round_trips_frames_written_together() {
    let (r, mut w) = pipe();
    let mut both = sealed(b"{\"a\":1}");
    both.extend(sealed(b""));
    both.extend(sealed(b"xyz"));
    w.write_all(&both).unwrap();
    drop(w);
    let mut reader = FrameReader::new(r, 1024);
    assert_eq!(reader.read_frame(None).unwrap(), b"{\"a\":1}".as_slice());
    assert_eq!(reader.read_frame(None).unwrap(), b"".as_slice());
    assert_eq!(reader.read_frame(None).unwrap(), b"xyz".as_slice());
    assert!(matches!(reader.read_frame(None), Err(FrameError::Eof)));
}

#[test]
fn large_frame_spanning_many_reads() {
    let (r, mut w) = pipe();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let frame = sealed(&body);
    let writer = std::thread::spawn(move || w.write_all(&frame).unwrap());
    let mut reader = FrameReader::new(r, 4_000_000);
    assert_eq!(reader.read_frame(None).unwrap(), &body[..]);
    writer.join().unwrap();
}

#[test]
fn a_large_frame_taken_keeps_its_bytes_while_later_ones_are_read() {
    let (r, mut w) = pipe();
    let bodies: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'a' + i; 200_000]).collect();
    let frames: Vec<u8> = bodies.iter().flat_map(|b| sealed(b)).collect();
    let writer = std::thread::spawn(move || w.write_all(&frames).unwrap());
    let mut reader = FrameReader::new(r, 1 << 20);
    let mut kept = Vec::new();
    for body in &bodies {
        assert_eq!(reader.read_frame(None).unwrap(), &body[..]);
        match reader.last_frame() {
            Body::Owned(frame) => kept.push(frame),
            Body::Lent(_) => panic!("a large frame is handed over whole"),
        }
    }
    writer.join().unwrap();
    let kept: Vec<&[u8]> = kept.iter().map(|frame| frame.bytes()).collect();
    assert_eq!(kept, bodies.iter().map(|b| &b[..]).collect::<Vec<_>>());
}

#[test]
fn a_small_frame_is_lent_as_read() {
    let (r, mut w) = pipe();
    w.write_all(&[sealed(b"one"), sealed(b"two")].concat())
        .unwrap();
    let mut reader = FrameReader::new(r, 1024);
    for expected in [b"one", b"two"] {
        reader.read_frame(None).unwrap();
        assert!(matches!(reader.last_frame(), Body::Lent(body) if body == expected));
    }
}

#[test]
fn a_large_frame_interrupted_by_its_deadline_resumes() {
    let (r, mut w) = pipe();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut frame = sealed(&body);
    frame.extend(sealed(b"next"));
    // Less than a pipe's default capacity, so the write returns without a reader.
    w.write_all(&frame[..60_000]).unwrap();
    let mut reader = FrameReader::new(r, 1 << 20);
    let soon = Instant::now() + Duration::from_millis(20);
    assert!(matches!(
        reader.read_frame(Some(soon)),
        Err(FrameError::Timeout)
    ));
    let rest = frame[60_000..].to_vec();
    let writer = std::thread::spawn(move || w.write_all(&rest).unwrap());
    assert_eq!(reader.read_frame(None).unwrap(), &body[..]);
    writer.join().unwrap();
    assert_eq!(reader.read_frame(None).unwrap(), b"next".as_slice());
}

#[test]
fn cap_is_enforced_on_both_sides() {
    let (r, mut w) = pipe();
    w.write_all(&[0, 0, 4, 1]).unwrap();
    let mut reader = FrameReader::new(r, 1024);
    assert!(matches!(
        reader.read_frame(None),
        Err(FrameError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    let mut buf = frame_buffer(10);
    buf.extend_from_slice(&[1; 10]);
    assert!(matches!(
        seal(&mut buf, 9),
        Err(FrameError::TooLarge { len: 10, max: 9 })
    ));
}

#[test]
fn writes_wait_for_room_until_the_deadline() {
    let (r, mut w) = pipe();
    set_nonblocking(&w).unwrap();
    let big = vec![7u8; 4 << 20];
    let deadline = Instant::now() + Duration::from_millis(50);
    assert!(matches!(
        write_frame(&mut w, &big, Some(deadline)),
        Err(FrameError::Timeout)
    ));
    drop(r);
    assert!(matches!(
        write_frame(&mut w, b"x", None),
        Err(FrameError::Io(_))
    ));
}

#[test]
fn unread_bytes_are_visible_from_the_write_end() {
    let (mut r, mut w) = pipe();
    w.write_all(b"12345").unwrap();
    assert_eq!(unread_bytes(&w), Some(5));
    let mut two = [0; 2];
    r.read_exact(&mut two).unwrap();
    assert_eq!(unread_bytes(&w), Some(3));
    drop(r);
    assert_eq!(
        unread_bytes(&w),
        Some(3),
        "still answers once the reader is gone"
    );
}

#[test]
fn truncated_frame_and_timeout() {
    truncated_frame_and_timeout_with(false);
}

#[test]
fn an_eager_reader_waits_and_fails_the_same_way() {
    truncated_frame_and_timeout_with(true);

    // Data there already, and data that arrives while it waits.
    let (r, mut w) = pipe();
    let mut reader = FrameReader::new(r, 1024);
    reader.eager().unwrap();
    w.write_all(&sealed(b"now")).unwrap();
    assert_eq!(reader.read_frame(None).unwrap(), b"now");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        w.write_all(&sealed(b"later")).unwrap();
        w
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    assert_eq!(reader.read_frame(Some(deadline)).unwrap(), b"later");
    drop(writer.join().unwrap());
    assert!(matches!(reader.read_frame(None), Err(FrameError::Eof)));
}

fn truncated_frame_and_timeout_with(eager: bool) {
    let (r, mut w) = pipe();
    w.write_all(&[0, 0, 0, 10, b'a']).unwrap();
    let mut reader = FrameReader::new(r, 1024);
    if eager {
        reader.eager().unwrap();
    }
    let started = Instant::now();
    let deadline = started + Duration::from_millis(50);
    assert!(matches!(
        reader.read_frame(Some(deadline)),
        Err(FrameError::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_millis(50));
    drop(w);
    assert!(matches!(
        reader.read_frame(None),
        Err(FrameError::Truncated {
            expected: 10,
            got: 1
        })
    ));
}
