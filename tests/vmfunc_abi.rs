//! `vmfunc-kmod/include/uapi/xos_vmfunc.h` must agree with `vmm::vmfunc`:
//! the header is compiled with gcc and every struct size, field offset,
//! constant and ioctl number is compared.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;
use vmm::vmfunc::*;

const PROGRAM: &str = r#"#include <stdio.h>
#include <stddef.h>
#include <uapi/xos_vmfunc.h>
#define P(name, value) printf("%s %llu\n", name, (unsigned long long)(value))
#define S(type) P(#type, sizeof(struct type))
#define O(type, field) P(#type "." #field, offsetof(struct type, field))
int main(void) {
    S(xos_vmfunc_info);
    O(xos_vmfunc_info, abi_version); O(xos_vmfunc_info, max_views);
    O(xos_vmfunc_info, caps); O(xos_vmfunc_info, missing);
    O(xos_vmfunc_info, flags); O(xos_vmfunc_info, reserved0);
    O(xos_vmfunc_info, reserved);
    S(xos_vmfunc_attach);
    O(xos_vmfunc_attach, vm_fd); O(xos_vmfunc_attach, flags); O(xos_vmfunc_attach, reserved);
    S(xos_vmfunc_view);
    O(xos_vmfunc_view, view); O(xos_vmfunc_view, flags); O(xos_vmfunc_view, reserved);
    S(xos_vmfunc_map);
    O(xos_vmfunc_map, view); O(xos_vmfunc_map, prot); O(xos_vmfunc_map, gpa);
    O(xos_vmfunc_map, size); O(xos_vmfunc_map, source_gpa); O(xos_vmfunc_map, reserved);
    S(xos_vmfunc_vcpu);
    O(xos_vmfunc_vcpu, vcpu_id); O(xos_vmfunc_vcpu, flags); O(xos_vmfunc_vcpu, reserved);
    S(xos_vmfunc_vcpu_status);
    O(xos_vmfunc_vcpu_status, vcpu_id); O(xos_vmfunc_vcpu_status, flags);
    O(xos_vmfunc_vcpu_status, current_view); O(xos_vmfunc_vcpu_status, reserved0);
    O(xos_vmfunc_vcpu_status, vm_function_control); O(xos_vmfunc_vcpu_status, reserved);
    S(xos_vmfunc_vcpu_view);
    O(xos_vmfunc_vcpu_view, vcpu_id); O(xos_vmfunc_vcpu_view, view);
    O(xos_vmfunc_vcpu_view, reserved);
    P("GET_INFO", XOS_VMFUNC_GET_INFO); P("ATTACH", XOS_VMFUNC_ATTACH);
    P("CREATE_VIEW", XOS_VMFUNC_CREATE_VIEW); P("DESTROY_VIEW", XOS_VMFUNC_DESTROY_VIEW);
    P("MAP", XOS_VMFUNC_MAP); P("UNMAP", XOS_VMFUNC_UNMAP);
    P("ENABLE_VCPU", XOS_VMFUNC_ENABLE_VCPU); P("DISABLE_VCPU", XOS_VMFUNC_DISABLE_VCPU);
    P("VCPU_STATUS", XOS_VMFUNC_VCPU_STATUS); P("SET_VCPU_VIEW", XOS_VMFUNC_SET_VCPU_VIEW);
    P("magic", XOS_VMFUNC_IOC_MAGIC); P("abi_version", XOS_VMFUNC_ABI_VERSION);
    P("max_views", XOS_VMFUNC_MAX_VIEWS); P("view_kvm", XOS_VMFUNC_VIEW_KVM);
    P("cap_vmx", XOS_VMFUNC_CAP_VMX); P("cap_vmfunc_ctl", XOS_VMFUNC_CAP_VMFUNC_CTL);
    P("cap_eptp_switch", XOS_VMFUNC_CAP_EPTP_SWITCH); P("cap_ept_4level", XOS_VMFUNC_CAP_EPT_4LEVEL);
    P("cap_ept_wb", XOS_VMFUNC_CAP_EPT_WB); P("cap_invept", XOS_VMFUNC_CAP_INVEPT);
    P("cap_invept_single", XOS_VMFUNC_CAP_INVEPT_SINGLE); P("cap_invept_all", XOS_VMFUNC_CAP_INVEPT_ALL);
    P("cap_ept_exec_only", XOS_VMFUNC_CAP_EPT_EXEC_ONLY); P("cap_ept_ad", XOS_VMFUNC_CAP_EPT_AD);
    P("caps_required", XOS_VMFUNC_CAPS_REQUIRED); P("info_usable", XOS_VMFUNC_INFO_USABLE);
    P("view_empty", XOS_VMFUNC_VIEW_EMPTY);
    P("prot_read", XOS_VMFUNC_PROT_READ); P("prot_write", XOS_VMFUNC_PROT_WRITE);
    P("prot_exec", XOS_VMFUNC_PROT_EXEC); P("prot_all", XOS_VMFUNC_PROT_ALL);
    P("vcpu_enabled", XOS_VMFUNC_VCPU_ENABLED); P("vcpu_switching", XOS_VMFUNC_VCPU_SWITCHING);
    printf("device %s\n", XOS_VMFUNC_DEVICE_NAME);
    return 0;
}
"#;

#[test]
fn the_c_header_matches_the_rust_mirror() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmfunc-abi");
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("mirror.c");
    std::fs::write(&src, PROGRAM).expect("write");
    let exe = dir.join("mirror");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/vmfunc-kmod/include");
    let status = Command::new("gcc")
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", include, "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed on xos_vmfunc.h");
    let out = Command::new(&exe).output().expect("run mirror");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut device = None;
    let mut c: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').expect("name value");
        if k == "device" {
            device = Some(v.to_string());
        } else {
            c.insert(k, v.parse().expect("number"));
        }
    }
    assert_eq!(device.as_deref(), Some(DEVICE_NAME));
    assert_eq!(format!("/dev/{DEVICE_NAME}"), DEVICE_PATH);

    macro_rules! o {
        ($c:literal, $t:ty, $f:ident) => {
            (concat!($c, ".", stringify!($f)), offset_of!($t, $f) as u64)
        };
    }
    let expected: &[(&str, u64)] = &[
        ("xos_vmfunc_info", size_of::<Info>() as u64),
        o!("xos_vmfunc_info", Info, abi_version),
        o!("xos_vmfunc_info", Info, max_views),
        o!("xos_vmfunc_info", Info, caps),
        o!("xos_vmfunc_info", Info, missing),
        o!("xos_vmfunc_info", Info, flags),
        o!("xos_vmfunc_info", Info, reserved0),
        o!("xos_vmfunc_info", Info, reserved),
        ("xos_vmfunc_attach", size_of::<Attach>() as u64),
        o!("xos_vmfunc_attach", Attach, vm_fd),
        o!("xos_vmfunc_attach", Attach, flags),
        o!("xos_vmfunc_attach", Attach, reserved),
        ("xos_vmfunc_view", size_of::<View>() as u64),
        o!("xos_vmfunc_view", View, view),
        o!("xos_vmfunc_view", View, flags),
        o!("xos_vmfunc_view", View, reserved),
        ("xos_vmfunc_map", size_of::<Map>() as u64),
        o!("xos_vmfunc_map", Map, view),
        o!("xos_vmfunc_map", Map, prot),
        o!("xos_vmfunc_map", Map, gpa),
        o!("xos_vmfunc_map", Map, size),
        o!("xos_vmfunc_map", Map, source_gpa),
        o!("xos_vmfunc_map", Map, reserved),
        ("xos_vmfunc_vcpu", size_of::<Vcpu>() as u64),
        o!("xos_vmfunc_vcpu", Vcpu, vcpu_id),
        o!("xos_vmfunc_vcpu", Vcpu, flags),
        o!("xos_vmfunc_vcpu", Vcpu, reserved),
        ("xos_vmfunc_vcpu_status", size_of::<VcpuStatus>() as u64),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, vcpu_id),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, flags),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, current_view),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, reserved0),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, vm_function_control),
        o!("xos_vmfunc_vcpu_status", VcpuStatus, reserved),
        ("xos_vmfunc_vcpu_view", size_of::<VcpuView>() as u64),
        o!("xos_vmfunc_vcpu_view", VcpuView, vcpu_id),
        o!("xos_vmfunc_vcpu_view", VcpuView, view),
        o!("xos_vmfunc_vcpu_view", VcpuView, reserved),
        ("GET_INFO", GET_INFO),
        ("ATTACH", ATTACH),
        ("CREATE_VIEW", CREATE_VIEW),
        ("DESTROY_VIEW", DESTROY_VIEW),
        ("MAP", MAP),
        ("UNMAP", UNMAP),
        ("ENABLE_VCPU", ENABLE_VCPU),
        ("DISABLE_VCPU", DISABLE_VCPU),
        ("VCPU_STATUS", VCPU_STATUS),
        ("SET_VCPU_VIEW", SET_VCPU_VIEW),
        ("magic", u64::from(IOC_MAGIC)),
        ("abi_version", u64::from(ABI_VERSION)),
        ("max_views", u64::from(MAX_VIEWS)),
        ("view_kvm", u64::from(VIEW_KVM)),
        ("cap_vmx", cap::VMX),
        ("cap_vmfunc_ctl", cap::VMFUNC_CTL),
        ("cap_eptp_switch", cap::EPTP_SWITCH),
        ("cap_ept_4level", cap::EPT_4LEVEL),
        ("cap_ept_wb", cap::EPT_WB),
        ("cap_invept", cap::INVEPT),
        ("cap_invept_single", cap::INVEPT_SINGLE),
        ("cap_invept_all", cap::INVEPT_ALL),
        ("cap_ept_exec_only", cap::EPT_EXEC_ONLY),
        ("cap_ept_ad", cap::EPT_AD),
        ("caps_required", cap::REQUIRED),
        ("info_usable", u64::from(INFO_USABLE)),
        ("view_empty", u64::from(VIEW_EMPTY)),
        ("prot_read", u64::from(Prot::READ.0)),
        ("prot_write", u64::from(Prot::WRITE.0)),
        ("prot_exec", u64::from(Prot::EXEC.0)),
        ("prot_all", u64::from(Prot::ALL.0)),
        ("vcpu_enabled", u64::from(VCPU_ENABLED)),
        ("vcpu_switching", u64::from(VCPU_SWITCHING)),
    ];
    for (name, value) in expected {
        assert_eq!(c.get(name), Some(value), "xos_vmfunc.h disagrees on {name}");
    }
    assert_eq!(
        c.len(),
        expected.len(),
        "a value printed by the C side is not compared"
    );
}
