//! The embedding API: load once, call many times, host functions, limits.

mod support;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::kvm_available;
use xos_vmm::vmm::GuestExit;
use xos_vmm::Function;

fn faults() -> Function {
    let image = xos_images::find("faults-c").expect("faults-c built");
    Function::from_elf(image.bytes).expect("valid image")
}

fn hostcall(f: &Function, name: &str, input: &str) -> String {
    let r = f
        .clone()
        .args(["faults", "hostcall", name, input])
        .call(b"")
        .expect("call");
    assert_eq!(
        r.exit,
        GuestExit::Exited(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).expect("utf-8")
}

#[test]
fn host_functions_are_called_with_the_guest_input_and_return_output() {
    if !kvm_available() {
        return;
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let f = faults()
        .host_fn("upper", move |input| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(input.to_ascii_uppercase())
        })
        .host_fn("fail", |_| Err("deliberate".into()))
        .host_fn("huge", |_| Ok(vec![b'x'; 10_000]));
    assert_eq!(hostcall(&f, "upper", "hello"), "ret=5 out=HELLO\n");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(hostcall(&f, "fail", "x"), "ret=-1000 out=\n");
    assert_eq!(hostcall(&f, "nosuch", "x"), "ret=-2 out=\n");
    assert_eq!(hostcall(&f, "huge", "x"), "ret=-7 out=\n");
}

#[test]
fn each_call_gets_a_fresh_virtine_and_its_own_output() {
    if !kvm_available() {
        return;
    }
    let image = xos_images::find("sum-rs").expect("sum-rs");
    let f = Function::from_elf(image.bytes).expect("image");
    for i in 0..5u64 {
        let r = f.call(format!("{i} {i}").as_bytes()).expect("call");
        assert_eq!(r.exit, GuestExit::Exited(0));
        assert_eq!(r.stdout, format!("{}\n", 2 * i).into_bytes());
    }
}

#[test]
fn calls_from_many_threads_run_concurrently_and_independently() {
    if !kvm_available() {
        return;
    }
    let image = xos_images::find("sum-c").expect("sum-c");
    let f = Function::from_elf(image.bytes).expect("image");
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let r = f.call(format!("{t} {i} 100").as_bytes()).expect("call");
                    assert_eq!(r.stdout, format!("{}\n", t + i + 100).into_bytes());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}

#[test]
fn timeouts_and_memory_limits_apply_to_calls() {
    if !kvm_available() {
        return;
    }
    let r = faults()
        .args(["faults", "loop"])
        .timeout(Duration::from_millis(100))
        .call(b"")
        .expect("call");
    assert!(matches!(r.exit, GuestExit::TimedOut { .. }), "{}", r.exit);
    let err = faults()
        .mem(1 << 20)
        .call(b"")
        .expect_err("1 MiB is too small");
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn bad_images_are_refused_with_the_reason() {
    let err = Function::from_elf(b"not an elf".to_vec())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("<memory>: not an ELF file"),
        "{err}"
    );
    let err = Function::from_file("/nonexistent/fn.elf")
        .err()
        .expect("refused");
    assert_eq!(err.to_string(), "/nonexistent/fn.elf: no such file");
}

#[test]
fn functions_snapshotted_at_their_ready_point_skip_initialisation() {
    if !kvm_available() {
        return;
    }
    let image = xos_images::find("ready-c").expect("ready-c");
    let f = Function::from_elf(image.bytes)
        .expect("image")
        .timeout(Duration::from_secs(5));
    let ready = f.snapshot_at_ready().expect("snapshot at ready");
    for input in ["a", "bc"] {
        let r = ready.call(input.as_bytes()).expect("call");
        assert_eq!(r.exit, GuestExit::Exited(0));
        assert_eq!(
            String::from_utf8(r.stdout).unwrap(),
            format!(
                "inits=1 restored=1 table=68933650521 input={}\n",
                input.to_uppercase()
            )
        );
    }
    // The snapshot travels as bytes and loads again.
    let bytes = ready.snapshot_bytes().expect("snapshot-based");
    let again = Function::from_snapshot(&bytes).expect("decode");
    let r = again.call(b"z").expect("call");
    assert!(String::from_utf8(r.stdout).unwrap().ends_with("input=Z\n"));
    // A function without a ready point cannot be snapshotted there.
    let hello = Function::from_elf(xos_images::find("hello-c").expect("hello").bytes).unwrap();
    let err = hello.snapshot_at_ready().err().expect("no ready point");
    assert!(
        err.to_string().contains("before it called xos_ready()"),
        "{err}"
    );
    let err = Function::from_snapshot(b"junk").err().expect("junk");
    assert!(err.to_string().starts_with("<memory>: "), "{err}");
}

#[test]
fn output_beyond_the_limit_ends_the_call_with_a_clear_fault() {
    if !kvm_available() {
        return;
    }
    // bigout prints 300,001 bytes.
    let r = faults()
        .args(["faults", "bigout"])
        .output_limit(100_000)
        .call(b"")
        .expect("call");
    match &r.exit {
        GuestExit::Faulted {
            fault: xos_vmm::vmm::Fault::OutputLimit { limit },
            ..
        } => assert_eq!(*limit, 100_000),
        other => panic!("expected the output limit, got {other}"),
    }
    assert!(r.exit.to_string().contains("100000-byte output limit"));
    assert!(
        r.stdout.len() <= 100_000,
        "{} bytes delivered",
        r.stdout.len()
    );
    // Within the default limit the same call succeeds.
    let r = faults().args(["faults", "bigout"]).call(b"").expect("call");
    assert_eq!(r.exit, GuestExit::Exited(0));
    assert_eq!(r.stdout.len(), 300_001);
}

#[test]
fn a_panicking_host_function_fails_the_call_not_the_embedder() {
    if !kvm_available() {
        return;
    }
    let f = faults().host_fn("boom", |input| Ok(vec![input[usize::MAX / 2]]));
    let r = f
        .clone()
        .args(["faults", "hostcall", "boom", ""])
        .call(b"")
        .expect("call");
    assert_eq!(String::from_utf8(r.stdout).unwrap(), "ret=-1000 out=\n");
    // The executor that ran it is still usable.
    assert_eq!(hostcall(&f, "nosuch", "x"), "ret=-2 out=\n");
}

#[test]
fn a_function_pool_serves_many_threads_and_can_kill_a_call() {
    if !kvm_available() {
        return;
    }
    let image = xos_images::find("ready-c").expect("ready-c");
    let pool = Function::from_elf(image.bytes)
        .expect("image")
        .timeout(Duration::from_secs(5))
        .pool(2)
        .expect("pool");
    let pool = std::sync::Arc::new(pool);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let r = pool.call(format!("{t}-{i}").as_bytes()).expect("call");
                    assert!(String::from_utf8(r.stdout)
                        .unwrap()
                        .ends_with(&format!("input={t}-{i}\n")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("caller");
    }
    assert!(pool.instances() <= 2);

    // A kill from another thread ends a call that would spin forever.
    let spin = Function::from_elf(xos_images::find("secret-c").expect("secret-c").bytes)
        .expect("image")
        .pool(1)
        .expect("pool");
    let kill = xos_vmm::vmm::Interrupter::new();
    let killer = kill.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        killer.kill();
    });
    let r = spin.call_with(b"spin X", &kill).expect("call");
    t.join().expect("killer");
    assert_eq!(r.exit, GuestExit::Killed);
    // The killed instance was replaced; the pool goes on.
    let r = spin.call(b"get X").expect("call");
    assert_eq!(r.stdout, b"clean\n");
}

#[test]
fn a_kill_ends_a_pooled_call_while_its_guest_waits_in_a_host_function() {
    if !kvm_available() {
        return;
    }
    let image = xos_images::find("secret-c").expect("secret-c");
    let pool = Function::from_elf(image.bytes)
        .expect("image")
        .host_fn("nap", |_| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(b"late".to_vec())
        })
        .host_fn("quick", |_| Ok(b"fast".to_vec()))
        .pool(2)
        .expect("pool");
    assert_eq!(
        pool.call(b"call quick").expect("call").stdout,
        b"ret=4 out=fast\n"
    );
    let kill = xos_vmm::vmm::Interrupter::new();
    let killer = kill.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        killer.kill();
    });
    let start = std::time::Instant::now();
    let r = pool.call_with(b"call nap", &kill).expect("call");
    t.join().expect("killer");
    assert_eq!(r.exit, GuestExit::Killed);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // The pool goes on with its other instance meanwhile.
    assert_eq!(
        pool.call(b"call quick").expect("call").stdout,
        b"ret=4 out=fast\n"
    );
}

#[test]
fn oversize_input_is_refused_before_anything_runs() {
    let image = xos_images::find("sum-c").expect("sum-c");
    let f = Function::from_elf(image.bytes)
        .expect("image")
        .input_limit(10);
    let err = f.call(b"1 2 3 4 5 6 7").expect_err("refused");
    assert_eq!(
        err.to_string(),
        "the input is 13 bytes, more than the 10-byte input limit (Function::input_limit)"
    );
}
