/* crt0 of xos C guests. The monitor enters here at CPL3 with RSP =
 * BootInfo.stack_top and RDI = the BootInfo address (docs/ABI.md, "Entry
 * state"). The linker script places .text._start first in .text. */
    .section .text._start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    xor %ebp, %ebp              /* outermost frame for backtraces */
    and $-16, %rsp              /* SysV: 16-byte aligned before the call */
    call __xos_start            /* RDI = BootInfo; never returns */
    ud2
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
