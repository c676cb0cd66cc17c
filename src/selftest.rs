//! `xos-vmm selftest ept-view`: the EPT-view checks as a TAP stream, for
//! machines where `cargo test` does not run (the Bochs stage boots a
//! kernel with real VMX and runs a static `xos-vmm` there: the same
//! monitor code under another KVM backend than this machine's).
//!
//! Each check runs real guests (the built-in images) and asserts what it
//! printed and how it ended.

use crate::icf::ept_view::EptViewFactory;
use crate::icf::{IcSpec, IsolationContext, IsolationContextFactory};
use std::time::Duration;
use vmm::view::Switching;
use vmm::{Fault, GuestExit, GuestIo, Program};

/// One check's outcome: `Err` says what went wrong.
pub type Check = Result<(), String>;

fn spec(image: &str, args: &[&str]) -> Result<IcSpec, String> {
    let image = xos_images::find(image).ok_or_else(|| format!("no built-in image {image}"))?;
    let program = Program::parse(image.bytes).map_err(|e| format!("{}: {e}", image.name))?;
    let mut spec = IcSpec::new(program);
    spec.args = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    spec.timeout = Some(Duration::from_secs(60));
    Ok(spec)
}

fn run(ic: &mut Box<dyn IsolationContext>) -> Result<Ended, String> {
    run_counted(ic).map(|(exit, text, _)| (exit, text))
}

/// How a guest ended, what it printed, and how many exits its run took.
fn run_counted(ic: &mut Box<dyn IsolationContext>) -> Result<(GuestExit, String, u64), String> {
    let (io, out, _err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).map_err(|e| e.to_string())?;
    Ok((
        outcome.exit,
        String::from_utf8_lossy(&out.contents()).into_owned(),
        outcome.stats.exits,
    ))
}

fn alone(
    factory: &dyn IsolationContextFactory,
    image: &str,
    args: &[&str],
) -> Result<(GuestExit, String), String> {
    let mut ic = factory
        .create(spec(image, args)?)
        .map_err(|e| e.to_string())?;
    run(&mut ic)
}

/// How a guest ended and what it printed.
type Ended = (GuestExit, String);

/// Runs a connected pair (the callee on a thread); the caller's IC goes
/// when it ends, which ends the callee's service. The caller's exit count
/// comes last. A callee that ended before its run began (with its caller,
/// when a VMFUNC pair breaks the protocol) reports why as `Err`.
fn pair_counted(
    switching: Option<Switching>,
    caller: (&str, &[&str]),
    callee: (&str, &[&str]),
) -> Result<(Ended, Result<Ended, String>, u64), String> {
    let (mut a, mut b) = EptViewFactory
        .create_pair_switching(
            spec(caller.0, caller.1)?,
            spec(callee.0, callee.1)?,
            switching,
        )
        .map_err(|e| e.to_string())?;
    let served = std::thread::spawn(move || run(&mut b));
    let called = run_counted(&mut a);
    drop(a);
    let served = served
        .join()
        .map_err(|_| "the callee's thread panicked".to_string())?;
    let (exit, text, exits) = called?;
    Ok(((exit, text), served, exits))
}

fn pair(
    switching: Option<Switching>,
    caller: (&str, &[&str]),
    callee: (&str, &[&str]),
) -> Result<(Ended, Ended), String> {
    let (called, served, _) = pair_counted(switching, caller, callee)?;
    Ok((called, served?))
}

/// The selftest's `--switching` values.
pub fn parse_switching(name: &str) -> Result<Option<Switching>, String> {
    match name {
        "auto" => Ok(None),
        "memslot" => Ok(Some(Switching::Memslot)),
        "vmfunc" => Ok(Some(Switching::Vmfunc)),
        "emulated" => Ok(Some(Switching::EmulatedVmfunc)),
        other => Err(format!(
            "unknown switching {other:?}: auto, memslot, vmfunc or emulated"
        )),
    }
}

fn expect(what: &str, got: impl std::fmt::Debug, ok: bool) -> Check {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}"))
    }
}

/// The EPT-view checks, in order, with pairs switching as `switching`
/// says (`None`: as the ICF picks).
pub fn ept_view(switching: Option<Switching>) -> Vec<(&'static str, Check)> {
    let vmfunc = switching == Some(Switching::Vmfunc);
    let virtine = crate::binary_registry().resolve("virtine");
    let mut out: Vec<(&'static str, Check)> = Vec::new();
    out.push((
        "a virtine runs hello-c",
        virtine
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|f| alone(f.as_ref(), "hello-c", &["hello", "x"]))
            .and_then(|(exit, text)| {
                expect(
                    "exit and output",
                    (&exit, &text),
                    exit == GuestExit::Exited(0) && text == "hello from a virtine: x\n",
                )
            }),
    ));
    out.push((
        "an ept-view IC runs hello-c",
        alone(&EptViewFactory, "hello-c", &["hello", "y"]).and_then(|(exit, text)| {
            expect(
                "exit and output",
                (&exit, &text),
                exit == GuestExit::Exited(0) && text == "hello from a virtine: y\n",
            )
        }),
    ));
    out.push((
        "an ept-view IC's null dereference is a fault",
        alone(&EptViewFactory, "faults-c", &["faults", "null"]).and_then(|(exit, _)| {
            let faulted = matches!(exit, GuestExit::Faulted { .. });
            expect("exit", exit, faulted)
        }),
    ));
    for (mode, what) in [
        (
            "exec-data",
            "an ept-view IC cannot run code it wrote into its data (W^X)",
        ),
        ("write-code", "an ept-view IC cannot write its code (W^X)"),
    ] {
        out.push((
            what,
            alone(&EptViewFactory, "faults-c", &["faults", mode]).and_then(|(exit, _)| {
                let page_fault = matches!(
                    &exit,
                    GuestExit::Faulted {
                        fault: Fault::Exception(e),
                        ..
                    } if e.vector == 14
                );
                expect("exit", exit, page_fault)
            }),
        ));
    }
    out.push((
        "a pair makes 20 calls through the trampoline, every reply right (with VMFUNC: fewer exits than calls)",
        pair_counted(
            switching,
            ("chan-c", &["chan", "call", "20", "100"]),
            ("chan-c", &["chan", "serve"]),
        )
        .and_then(|((exit, _), served, exits)| {
            println!("# 20 calls: the caller's run took {exits} exits");
            let served = served?.0;
            expect(
                "caller and callee exits, the caller's exit count",
                (&exit, &served, exits),
                exit == GuestExit::Exited(0)
                    && served == GuestExit::Exited(0)
                    && (!vmfunc || exits < 20),
            )
        }),
    ));
    out.push((
        "the caller sees its own memory, only the reply crosses",
        pair(
            switching,
            ("faults-c", &["faults", "view-peek"]),
            ("faults-c", &["faults", "view-secret"]),
        )
        .and_then(|((_, text), _)| {
            expect(
                "caller's output",
                &text,
                text == "peek: reply=ok mine=clean\n",
            )
        }),
    ));
    out.push((
        "a callee that crashes in a call fails alone (the call returns EPIPE)",
        pair(
            switching,
            ("faults-c", &["faults", "view-call"]),
            ("faults-c", &["faults", "view-crash"]),
        )
        .and_then(|((exit, text), (served, _))| {
            let callee_failed = matches!(
                served,
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(_),
                    ..
                }
            );
            expect(
                "caller's exit and output, callee's exit",
                (&exit, &text, &served),
                exit == GuestExit::Exited(0) && text == "call=-32\n" && callee_failed,
            )
        }),
    ));
    out.push((
        "a switch from outside the trampoline is a fault",
        pair(
            switching,
            ("faults-c", &["faults", "view-switch", "1"]),
            ("chan-c", &["chan", "serve"]),
        )
        .and_then(|((exit, text), _)| {
            // The monitor refuses it (memory slots, emulated VMFUNC); with
            // VMFUNC, KVM decodes the doorbell write from the base's
            // memory, finds no code there and gives the guest #PF.
            let refused = matches!(
                exit,
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(_),
                    ..
                }
            ) || (vmfunc && matches!(exit, GuestExit::Faulted { .. }));
            expect(
                "caller's exit and output",
                (&exit, &text),
                refused && text.is_empty(),
            )
        }),
    ));
    out.push((
        "a dirty direction flag and MXCSR do not reach the callee",
        pair(
            switching,
            ("faults-c", &["faults", "view-dirty"]),
            ("faults-c", &["faults", "view-flags"]),
        )
        .and_then(|((_, text), _)| {
            expect("caller's output", &text, text == "reply: df=0 mxcsr=1f80\n")
        }),
    ));
    out.push((
        "a jump to the way back while in no call is refused, nothing of the callee shows",
        pair_counted(
            switching,
            ("faults-c", &["faults", "view-jump-return"]),
            ("faults-c", &["faults", "view-secret"]),
        )
        .and_then(|((exit, text), served, _)| {
            let refused = matches!(
                exit,
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(_),
                    ..
                }
            );
            let leaked = served
                .as_ref()
                .is_ok_and(|(_, out)| out.contains("TOPSECRET"));
            expect(
                "caller's exit and output, callee's",
                (&exit, &text, &served),
                refused && text.is_empty() && !leaked,
            )
        }),
    ));
    out.push((
        "a switch to view 0 / the base entry from the trampoline is refused, nothing of the callee shows",
        pair_counted(
            switching,
            ("faults-c", &["faults", "view-jump-base"]),
            ("faults-c", &["faults", "view-secret"]),
        )
        .and_then(|((exit, text), served, _)| {
            let refused = matches!(
                exit,
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(_),
                    ..
                }
            );
            let leaked = served
                .as_ref()
                .is_ok_and(|(_, out)| out.contains("TOPSECRET"));
            expect(
                "caller's exit and output, callee's",
                (&exit, &text, &served),
                refused && text.is_empty() && !leaked,
            )
        }),
    ));
    out
}

/// Prints `checks` as TAP; whether all passed.
pub fn print_tap(checks: &[(&'static str, Check)]) -> bool {
    let mut all = true;
    for (i, (name, result)) in checks.iter().enumerate() {
        match result {
            Ok(()) => println!("ok {} - {name}", i + 1),
            Err(why) => {
                all = false;
                println!("not ok {} - {name}", i + 1);
                for line in why.lines() {
                    println!("# {line}");
                }
            }
        }
    }
    println!("1..{}", checks.len());
    all
}
