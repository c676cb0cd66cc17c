//! `guest-runtime/c/xos_abi.h` must agree with the `xos-abi` crate: the
//! header is compiled with gcc and every offset, size and constant is
//! compared.

use std::mem::{offset_of, size_of};
use std::process::Command;
use xos_abi::*;

#[test]
fn the_c_header_matches_the_rust_definitions() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("abi-mirror");
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("mirror.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "xos_abi.h"
#define P(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
int main(void) {
    P("magic", offsetof(struct xos_boot_info, magic));
    P("abi_version", offsetof(struct xos_boot_info, abi_version));
    P("mem_size", offsetof(struct xos_boot_info, mem_size));
    P("argc", offsetof(struct xos_boot_info, argc));
    P("argv", offsetof(struct xos_boot_info, argv));
    P("envp", offsetof(struct xos_boot_info, envp));
    P("heap_start", offsetof(struct xos_boot_info, heap_start));
    P("heap_end", offsetof(struct xos_boot_info, heap_end));
    P("stack_top", offsetof(struct xos_boot_info, stack_top));
    P("stack_bottom", offsetof(struct xos_boot_info, stack_bottom));
    P("stdin", offsetof(struct xos_boot_info, stdin_state));
    P("output", offsetof(struct xos_boot_info, output));
    P("hypercall", offsetof(struct xos_boot_info, hypercall));
    P("ret", offsetof(struct xos_hypercall, ret));
    P("window", offsetof(struct xos_boot_info, window));
    P("window_side", offsetof(struct xos_window_info, side));
    P("window_flags", offsetof(struct xos_window_info, flags));
    P("window_addr", XOS_WINDOW); P("max_window", XOS_MAX_WINDOW_SIZE);
    P("may_sleep", XOS_WINDOW_MAY_SLEEP);
    P("window_wait", XOS_HC_WINDOW_WAIT); P("window_wake", XOS_HC_WINDOW_WAKE);
    P("epipe", -XOS_EPIPE); P("safe_point", XOS_HC_SAFE_POINT); P("view_switch", XOS_HC_VIEW_SWITCH);
    P("devices", offsetof(struct xos_boot_info, devices));
    P("vc_size", sizeof(struct xos_view_control));
    P("vc_flags", offsetof(struct xos_view_control, flags));
    P("vg_size", sizeof(struct xos_view_gate));
    P("vg_peer_slot", offsetof(struct xos_view_gate, peer_slot));
    P("vg_caller_slot", offsetof(struct xos_view_gate, caller_slot));
    P("vg_open", offsetof(struct xos_view_gate, open));
    P("view_gate", XOS_VIEW_GATE);
    P("view_wait", XOS_HC_VIEW_WAIT); P("view_bad_entry", XOS_HC_VIEW_BAD_ENTRY);
    P("no_slot", XOS_VIEW_NO_SLOT); P("in_call", XOS_VIEW_IN_CALL);
    P("view_hypercall", XOS_VIEW_HYPERCALL);
    P("virtio_mmio", XOS_VIRTIO_MMIO); P("dev_virtio", XOS_DEVICE_VIRTIO_CHANNEL); P("dev_views", XOS_DEVICE_VIEWS);
    P("ring_magic", XOS_RING_MAGIC); P("ring_control", XOS_RING_CONTROL);
    P("ring_off_magic", XOS_RING_OFF_MAGIC); P("ring_off_capacity", XOS_RING_OFF_CAPACITY);
    P("ring_pid0", XOS_RING_OFF_PID(0)); P("ring_pid1", XOS_RING_OFF_PID(1));
    P("ring_closed0", XOS_RING_OFF_CLOSED(0)); P("ring_closed1", XOS_RING_OFF_CLOSED(1));
    P("ring_f_head1", XOS_RING_FIELD(1, XOS_RING_HEAD));
    P("ring_f_tail0", XOS_RING_FIELD(0, XOS_RING_TAIL));
    P("ring_f_cs1", XOS_RING_FIELD(1, XOS_RING_CONSUMER_SLEEPS));
    P("ring_f_ps0", XOS_RING_FIELD(0, XOS_RING_PRODUCER_SLEEPS));
    P("ring_header", XOS_RING_HEADER);
    P("size", sizeof(struct xos_boot_info));
    P("record", sizeof(struct xos_output_record));
    P("version", XOS_ABI_VERSION);
    P("boot_magic", XOS_BOOT_MAGIC);
    P("doorbell", XOS_DOORBELL);
    P("fault_port", XOS_FAULT_PORT);
    P("boot_info_addr", XOS_BOOT_INFO_ADDR);
    P("image_base", XOS_IMAGE_BASE);
    P("exit", XOS_HC_EXIT); P("abort", XOS_HC_ABORT); P("flush", XOS_HC_FLUSH);
    P("read_stdin", XOS_HC_READ_STDIN); P("write", XOS_HC_WRITE);
    P("host_call", XOS_HC_HOST_CALL); P("nop", XOS_HC_NOP); P("ready", XOS_HC_READY);
    P("efault", -XOS_EFAULT); P("einval", -XOS_EINVAL); P("enoent", -XOS_ENOENT);
    P("e2big", -XOS_E2BIG); P("eio", -XOS_EIO); P("ehostfn", -XOS_EHOSTFN);
    return 0;
}
"#,
    )
    .expect("write");
    let exe = dir.join("mirror");
    let header_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/guest-runtime/c");
    let status = Command::new("gcc")
        .arg("-I")
        .arg(header_dir)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed on xos_abi.h");
    let out = Command::new(&exe).output().expect("run mirror");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let c: std::collections::HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k, v.parse().expect("number")))
        .collect();
    let expected: &[(&str, u64)] = &[
        ("magic", offset_of!(BootInfo, magic) as u64),
        ("abi_version", offset_of!(BootInfo, abi_version) as u64),
        ("mem_size", offset_of!(BootInfo, mem_size) as u64),
        ("argc", offset_of!(BootInfo, argc) as u64),
        ("argv", offset_of!(BootInfo, argv) as u64),
        ("envp", offset_of!(BootInfo, envp) as u64),
        ("heap_start", offset_of!(BootInfo, heap_start) as u64),
        ("heap_end", offset_of!(BootInfo, heap_end) as u64),
        ("stack_top", offset_of!(BootInfo, stack_top) as u64),
        ("stack_bottom", offset_of!(BootInfo, stack_bottom) as u64),
        ("stdin", offset_of!(BootInfo, stdin) as u64),
        ("output", offset_of!(BootInfo, output) as u64),
        ("hypercall", offset_of!(BootInfo, hypercall) as u64),
        ("ret", offset_of!(Hypercall, ret) as u64),
        ("window", offset_of!(BootInfo, window) as u64),
        ("window_side", offset_of!(WindowInfo, side) as u64),
        ("window_flags", offset_of!(WindowInfo, flags) as u64),
        ("window_addr", WINDOW),
        ("max_window", MAX_WINDOW_SIZE),
        ("may_sleep", u64::from(WINDOW_MAY_SLEEP)),
        ("window_wait", u64::from(nr::WINDOW_WAIT)),
        ("window_wake", u64::from(nr::WINDOW_WAKE)),
        ("epipe", (-err::EPIPE) as u64),
        ("safe_point", u64::from(nr::SAFE_POINT)),
        ("view_switch", u64::from(nr::VIEW_SWITCH)),
        ("vc_size", size_of::<ViewControl>() as u64),
        ("vc_flags", offset_of!(ViewControl, flags) as u64),
        ("vg_size", size_of::<ViewGate>() as u64),
        ("vg_peer_slot", offset_of!(ViewGate, peer_slot) as u64),
        ("vg_caller_slot", offset_of!(ViewGate, caller_slot) as u64),
        ("vg_open", offset_of!(ViewGate, open) as u64),
        ("view_gate", xos_abi::view::GATE),
        ("view_wait", u64::from(nr::VIEW_WAIT)),
        ("view_bad_entry", u64::from(nr::VIEW_BAD_ENTRY)),
        ("no_slot", xos_abi::view::NO_SLOT),
        ("in_call", xos_abi::view::IN_CALL),
        ("view_hypercall", xos_abi::view::HYPERCALL),
        ("devices", offset_of!(BootInfo, devices) as u64),
        ("virtio_mmio", VIRTIO_MMIO),
        ("dev_virtio", DEVICE_VIRTIO_CHANNEL),
        ("dev_views", DEVICE_VIEWS),
        ("ring_magic", u64::from(ring::MAGIC)),
        ("ring_control", ring::CONTROL),
        ("ring_off_magic", ring::OFF_MAGIC),
        ("ring_off_capacity", ring::OFF_CAPACITY),
        ("ring_pid0", ring::OFF_PID[0]),
        ("ring_pid1", ring::OFF_PID[1]),
        ("ring_closed0", ring::OFF_CLOSED[0]),
        ("ring_closed1", ring::OFF_CLOSED[1]),
        ("ring_f_head1", ring::field(1, ring::HEAD)),
        ("ring_f_tail0", ring::field(0, ring::TAIL)),
        ("ring_f_cs1", ring::field(1, ring::CONSUMER_SLEEPS)),
        ("ring_f_ps0", ring::field(0, ring::PRODUCER_SLEEPS)),
        ("ring_header", ring::HEADER),
        ("size", size_of::<BootInfo>() as u64),
        ("record", OUTPUT_RECORD_SIZE),
        ("version", u64::from(ABI_VERSION)),
        ("boot_magic", BOOT_MAGIC),
        ("doorbell", DOORBELL),
        ("fault_port", u64::from(FAULT_PORT)),
        ("boot_info_addr", layout::BOOT_INFO),
        ("image_base", layout::IMAGE_BASE),
        ("exit", u64::from(nr::EXIT)),
        ("abort", u64::from(nr::ABORT)),
        ("flush", u64::from(nr::FLUSH)),
        ("read_stdin", u64::from(nr::READ_STDIN)),
        ("write", u64::from(nr::WRITE)),
        ("host_call", u64::from(nr::HOST_CALL)),
        ("nop", u64::from(nr::NOP)),
        ("ready", u64::from(nr::READY)),
        ("efault", (-err::EFAULT) as u64),
        ("einval", (-err::EINVAL) as u64),
        ("enoent", (-err::ENOENT) as u64),
        ("e2big", (-err::E2BIG) as u64),
        ("eio", (-err::EIO) as u64),
        ("ehostfn", (-err::EHOSTFN) as u64),
    ];
    for (name, value) in expected {
        assert_eq!(c.get(name), Some(value), "xos_abi.h disagrees on {name}");
    }
    assert_eq!(c.len(), expected.len());
}
