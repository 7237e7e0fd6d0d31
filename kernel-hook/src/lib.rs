//! Userspace side of the eBPF connect hook (filled by the kernel-hook issue).
