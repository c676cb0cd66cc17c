//! Every channel mechanism against the same contract: message boundaries,
//! ordering, large messages, zero-copy sends, timeouts, and a peer that
//! closes or dies mid-call (the caller gets an error, never a hang).

use std::time::{Duration, Instant};

use icf::channel::ring::{Notify, RingChannel};
use icf::channel::stream::{pipe_pair, tcp_pair, unix_pair};
use icf::{Channel, ChannelError, ComMechanism};

type Pair = (Box<dyn Channel>, Box<dyn Channel>);

fn pair(m: ComMechanism) -> Pair {
    fn boxed<C: Channel + 'static>((a, b): (C, C)) -> Pair {
        (Box::new(a), Box::new(b))
    }
    match m {
        // A small ring, so large messages must stream through it in pieces.
        ComMechanism::ShmRingPoll => boxed(RingChannel::pair(64 << 10, Notify::Poll).unwrap()),
        ComMechanism::ShmRingFutex => boxed(RingChannel::pair(64 << 10, Notify::Futex).unwrap()),
        ComMechanism::Pipe => boxed(pipe_pair().unwrap()),
        ComMechanism::UnixSocket => boxed(unix_pair().unwrap()),
        ComMechanism::Tcp => boxed(tcp_pair().unwrap()),
        ComMechanism::HypercallRelay | ComMechanism::Virtio | ComMechanism::ViewCall => {
            unreachable!("not a channel between host threads")
        }
    }
}

const MECHANISMS: [ComMechanism; 5] = [
    ComMechanism::ShmRingPoll,
    ComMechanism::ShmRingFutex,
    ComMechanism::Pipe,
    ComMechanism::UnixSocket,
    ComMechanism::Tcp,
];

/// Deterministic bytes that differ per message and position.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

/// Echo every message back until the peer goes away.
fn echo(mut ch: Box<dyn Channel>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut n = 0;
        while ch.recv(&mut buf).is_ok() {
            if ch.send(&buf).is_err() {
                break;
            }
            n += 1;
        }
        n
    })
}

#[test]
fn boundaries_and_order_are_kept() {
    let sizes = [
        0usize, 1, 3, 4, 5, 4095, 4096, 4097, 65_531, 65_536, 70_000, 17,
    ];
    for m in MECHANISMS {
        let (mut a, mut b) = pair(m);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = Vec::new();
            for _ in 0..sizes.len() * 3 {
                b.recv(&mut buf).unwrap();
                got.push(buf.clone());
            }
            got
        });
        let mut sent = Vec::new();
        for round in 0..3 {
            for (i, &len) in sizes.iter().enumerate() {
                let msg = pattern(round * 100 + i, len);
                a.send(&msg).unwrap();
                sent.push(msg);
            }
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), sent.len(), "{}", m.name());
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(g.len(), s.len(), "{}: message {i} length", m.name());
            assert!(g == s, "{}: message {i} content differs", m.name());
        }
    }
}

#[test]
fn large_messages_round_trip_through_a_small_ring() {
    for m in MECHANISMS {
        let (mut a, b) = pair(m);
        let peer = echo(b);
        let mut reply = Vec::new();
        for (i, len) in [5 << 20, 64 << 10, 3 << 20].into_iter().enumerate() {
            let msg = pattern(i, len);
            a.call(&msg, &mut reply).unwrap();
            assert!(reply == msg, "{}: {len}-byte echo differs", m.name());
        }
        drop(a);
        assert_eq!(peer.join().unwrap(), 3, "{}", m.name());
    }
}

#[test]
fn many_small_calls_in_order() {
    for m in MECHANISMS {
        let (mut a, b) = pair(m);
        let peer = echo(b);
        let mut reply = Vec::new();
        for i in 0u64..2000 {
            a.call(&i.to_le_bytes(), &mut reply).unwrap();
            assert_eq!(reply, i.to_le_bytes(), "{}", m.name());
        }
        drop(a);
        assert_eq!(peer.join().unwrap(), 2000, "{}", m.name());
    }
}

#[test]
fn zero_copy_send_delivers_what_was_committed() {
    for m in MECHANISMS {
        let (mut a, b) = pair(m);
        let peer = echo(b);
        let mut reply = Vec::new();
        // Sizes that land in the ring directly, and ones that wrap or exceed
        // it and go through the staging buffer.
        for (i, len) in [8usize, 4096, 60_000, 60_000, 200_000, 8]
            .into_iter()
            .enumerate()
        {
            let msg = pattern(i, len);
            let slice = a.acquire(len + 10).unwrap();
            assert!(slice.len() >= len, "{}", m.name());
            slice.copy_from(&msg);
            a.commit(len).unwrap();
            a.recv(&mut reply).unwrap();
            assert!(
                reply == msg,
                "{}: zero-copy {len}-byte message differs",
                m.name()
            );
        }
        match a.commit(1) {
            Err(ChannelError::BadCommit { acquired: None, .. }) => {}
            other => panic!("{}: commit without acquire: {other:?}", m.name()),
        }
        drop(a);
        peer.join().unwrap();
    }
}

#[test]
fn recv_times_out_when_nothing_comes() {
    for m in MECHANISMS {
        let (mut a, _b) = pair(m);
        a.set_timeout(Some(Duration::from_millis(50)));
        let t = Instant::now();
        match a.recv(&mut Vec::new()) {
            Err(ChannelError::Timeout { .. }) => {}
            other => panic!("{}: expected a timeout, got {other:?}", m.name()),
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(5),
            "{}: {took:?}",
            m.name()
        );
    }
}

#[test]
fn a_peer_thread_that_closes_mid_call_ends_the_call() {
    for m in MECHANISMS {
        let (mut a, mut b) = pair(m);
        let peer = std::thread::spawn(move || {
            let mut buf = Vec::new();
            b.recv(&mut buf).unwrap();
            // Drop without replying.
        });
        let t = Instant::now();
        match a.call(b"are you there?", &mut Vec::new()) {
            Err(ChannelError::PeerGone { .. }) => {}
            other => panic!("{}: expected PeerGone, got {other:?}", m.name()),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{}", m.name());
        peer.join().unwrap();
        // Later operations fail the same way instead of blocking.
        assert!(
            matches!(a.recv(&mut Vec::new()), Err(ChannelError::PeerGone { .. })),
            "{}",
            m.name()
        );
    }
}

/// Fork a child that takes `b`, receives one request and dies without
/// replying or closing anything (`_exit`, or SIGKILL).
fn fork_dying_peer(b: Box<dyn Channel>, kill: bool) -> libc::pid_t {
    let mut b = Some(b);
    let mut buf = Vec::with_capacity(1 << 16);
    // SAFETY: the child only uses the channel (atomics, syscalls, a
    // preallocated buffer) and leaves with _exit/raise, never returning into
    // the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if let Some(mut b) = b.take() {
            let _ = b.recv(&mut buf);
            std::mem::forget(b);
        }
        // SAFETY: ends the child at once; no destructors, no atexit.
        unsafe {
            if kill {
                libc::raise(libc::SIGKILL);
            }
            libc::_exit(0);
        }
    }
    if let Some(b) = b.take() {
        b.hand_over();
    }
    pid
}

#[test]
fn a_peer_process_that_dies_mid_call_ends_the_call() {
    for kill in [false, true] {
        for m in MECHANISMS {
            let (mut a, b) = pair(m);
            let pid = fork_dying_peer(b, kill);
            let t = Instant::now();
            let r = a.call(b"hello child", &mut Vec::new());
            let took = t.elapsed();
            let mut status = 0;
            // SAFETY: reaps our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match r {
                Err(ChannelError::PeerGone { .. }) => {}
                other => panic!(
                    "{} (kill={kill}): expected PeerGone, got {other:?}",
                    m.name()
                ),
            }
            assert!(took < Duration::from_secs(5), "{}: {took:?}", m.name());
        }
    }
}

#[test]
fn oversize_messages_are_refused_before_sending() {
    let (a, _b) = RingChannel::pair(4096, Notify::Futex).unwrap();
    let mut a = a.with_max_message(16);
    match a.send(&[0; 17]) {
        Err(
            e @ ChannelError::TooLarge {
                len: 17, max: 16, ..
            },
        ) => {
            assert!(e.to_string().contains("limit of 16 bytes"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let (p, _q) = pipe_pair().unwrap();
    let mut p = p.with_max_message(16);
    assert!(matches!(
        p.acquire(17),
        Err(ChannelError::TooLarge { len: 17, .. })
    ));
}

#[test]
fn a_peer_announcing_an_oversize_message_is_reported_as_corrupt() {
    let (mut a, b) = pipe_pair().unwrap();
    let mut b = b.with_max_message(1024);
    a.send(&[7; 2048]).unwrap();
    match b.recv(&mut Vec::new()) {
        Err(ChannelError::Corrupt { what, .. }) => assert!(what.contains("2048"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_ring_endpoint_reopened_from_its_memfd_talks_to_the_other_side() {
    let (mut a, b) = RingChannel::pair(8192, Notify::Futex).unwrap();
    let memfd = b.memfd().try_clone().unwrap();
    b.hand_over_in_process();
    let mut b = RingChannel::from_memfd(&memfd, 1, Notify::Futex).unwrap();
    let peer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        b.recv(&mut buf).unwrap();
        buf.reverse();
        b.send(&buf).unwrap();
    });
    let mut reply = Vec::new();
    a.call(b"abc", &mut reply).unwrap();
    assert_eq!(reply, b"cba");
    peer.join().unwrap();
}

#[test]
fn a_memfd_that_is_not_a_ring_is_refused() {
    let file = tempfile_memfd(3 * 4096);
    match RingChannel::from_memfd(&file, 0, Notify::Poll) {
        Err(ChannelError::Corrupt { what, .. }) => assert!(what.contains("magic"), "{what}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    match RingChannel::from_memfd(&file, 2, Notify::Poll) {
        Err(ChannelError::Corrupt { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

fn tempfile_memfd(len: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string; the fd is fresh and owned.
    let fd = unsafe { libc::memfd_create(c"not-a-ring".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}
