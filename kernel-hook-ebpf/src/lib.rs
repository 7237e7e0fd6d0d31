//! The C BPF programs and their committed compiled object (filled by the kernel-hook issue).
