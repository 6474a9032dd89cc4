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

/// Pieces kept outside the frame, as a caller's held strings are.
struct Held(Vec<(usize, Vec<u8>)>);

impl Splices for Held {
    fn pieces(&self) -> Vec<(usize, &[u8])> {
        self.0.iter().map(|(at, bytes)| (*at, &bytes[..])).collect()
    }
}

#[test]
fn a_spliced_frame_is_read_as_one_with_its_pieces_in_place() {
    let (r, mut w) = pipe();
    set_nonblocking(&w).unwrap();
    // Pieces at the start, in the middle, next to each other and at the end, several times
    // the pipe's capacity in all, so the write is partial and waits for room.
    let mut frame = frame_buffer(16);
    frame.extend_from_slice(b"<ab>");
    let at = |i: usize| HEADER_LEN + i;
    let held = Held(vec![
        (at(0), vec![b'1'; 700_000]),
        (at(2), vec![b'2'; 900_000]),
        (at(2), vec![b'3'; 10]),
        (at(4), vec![b'4'; 600_000]),
    ]);
    seal_spliced(&mut frame, held.len(), usize::MAX).unwrap();
    let mut expected = Vec::new();
    expected.extend([vec![b'1'; 700_000], b"<a".to_vec(), vec![b'2'; 900_000]]);
    expected.extend([vec![b'3'; 10], b"b>".to_vec(), vec![b'4'; 600_000]]);
    let expected = expected.concat();

    let reader = std::thread::spawn(move || {
        let mut reader = FrameReader::new(r, 4 << 20);
        let body = reader.read_frame(None).unwrap().to_vec();
        let next = reader.read_frame(None).unwrap().to_vec();
        (body, next)
    });
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    write_request(&mut w, &frame, Some(&held), deadline).unwrap();
    write_request(&mut w, &sealed(b"next"), None, deadline).unwrap();
    let (body, next) = reader.join().unwrap();
    assert!(
        body == expected,
        "the frame's bytes, its pieces in their places"
    );
    assert_eq!(next, b"next", "and the frame after it starts where it ends");
}

#[test]
fn pieces_count_towards_the_frame_cap() {
    let mut frame = frame_buffer(4);
    frame.extend_from_slice(b"{}");
    assert!(matches!(
        seal_spliced(&mut frame, 9, 10),
        Err(FrameError::TooLarge { len: 11, max: 10 })
    ));
    seal_spliced(&mut frame, 8, 10).unwrap();
    assert_eq!(&frame[..HEADER_LEN], &10u32.to_be_bytes());
}

#[test]
fn a_frame_with_more_pieces_than_one_writev_takes_is_written_whole() {
    let (r, mut w) = pipe();
    set_nonblocking(&w).unwrap();
    // Linux takes at most 1,024 slices per `writev`.
    let mut frame = frame_buffer(3_000);
    let mut held = Vec::new();
    let mut expected = Vec::new();
    for i in 0..1_500u32 {
        let byte = b'a' + (i % 26) as u8;
        held.push((frame.len(), vec![byte; 10]));
        expected.extend_from_slice(&[byte; 10]);
        frame.push(b',');
        expected.push(b',');
    }
    let held = Held(held);
    seal_spliced(&mut frame, held.len(), usize::MAX).unwrap();
    let reader = std::thread::spawn(move || {
        FrameReader::new(r, 1 << 20)
            .read_frame(None)
            .unwrap()
            .to_vec()
    });
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    write_request(&mut w, &frame, Some(&held), deadline).unwrap();
    assert!(reader.join().unwrap() == expected);
}
