//! Messages with descriptors attached, over a Unix seqpacket socket: how the pool hands a
//! template the pipes of a worker it is to fork, and gets back a pidfd of the result.
//! Seqpacket keeps each message whole, so one `recv` is one message.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The largest message either side sends (a few hundred bytes of JSON in practice).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// A connected pair of close-on-exec seqpacket sockets.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of [`MAX_FDS`] descriptors, aligned as `cmsghdr` needs.
const CONTROL_SPACE: usize = 64;

#[derive(Default)]
struct Control([u64; CONTROL_SPACE / 8]);

fn iovec(base: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base as *mut libc::c_void,
        iov_len: len,
    }
}

/// A header for one buffer and the whole control room; the caller keeps both alive.
fn header(iov: &mut libc::iovec, control: &mut Control) -> libc::msghdr {
    // SAFETY: msghdr is plain data, for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CONTROL_SPACE;
    msg
}

/// Sends `data` as one message, with `fds` attached (duplicated into the receiver).
pub fn send(socket: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = iovec(data.as_ptr() as *mut u8, data.len());
    let mut control = Control::default();
    // SAFETY: the pointers in the header outlive the sendmsg call, and the control buffer
    // (aligned as cmsghdr needs) is larger than CMSG_SPACE of MAX_FDS ints.
    unsafe {
        let mut msg = header(&mut iov, &mut control);
        msg.msg_controllen = 0;
        if !fds.is_empty() {
            let fd_bytes = std::mem::size_of_val(fds);
            msg.msg_controllen = libc::CMSG_SPACE(fd_bytes as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg) as *mut RawFd,
                fds.len(),
            );
        }
        retrying(|| libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)).map(|_| ())
    }
}

/// Runs a system call again while a signal interrupts it; its count, or the error.
fn retrying(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one message and the descriptors that came with it (close-on-exec). An empty
/// message with no descriptors is end of file: the peer closed its end.
pub fn recv(socket: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; MAX_MESSAGE];
    let mut iov = iovec(data.as_mut_ptr(), data.len());
    let mut control = Control::default();
    // SAFETY: as in `send`; the kernel writes at most msg_controllen bytes of control data and
    // iov_len bytes of data, and every descriptor it reports is new and ours to own.
    unsafe {
        let mut msg = header(&mut iov, &mut control);
        let n = retrying(|| libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC))?;
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(first.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::other("a template message was truncated"));
        }
        data.truncate(n);
        Ok((data, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};

    #[test]
    fn a_message_carries_working_descriptors_and_eof_is_empty() {
        let (a, b) = socket_pair().unwrap();
        let (read_end, write_end) = crate::process::pipe().unwrap();
        send(&a, b"hello", &[write_end.as_raw_fd()]).unwrap();
        drop(write_end);
        let (data, mut fds) = recv(&b).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(fds.len(), 1);
        File::from(fds.pop().unwrap())
            .write_all(b"through")
            .unwrap();
        let mut got = String::new();
        File::from(read_end).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
        drop(a);
        let (data, fds) = recv(&b).unwrap();
        assert!(data.is_empty() && fds.is_empty());
    }
}
