/* The event record shared by the BPF programs (hook.bpf.c) and user space (kernel-hook's
 * hook.rs, whose RawEvent mirrors this layout). Host byte order, natural alignment.
 *
 * Every numeric #define here is exported to Rust by kernel-hook-ebpf's build.rs (the
 * kernel_hook_ebpf::abi module), so both sides share one set of numbers: the HOOK_EVENT_*
 * layout below is held to the struct by _Static_asserts whenever clang compiles this header,
 * and to RawEvent by const assertions whenever Rust compiles kernel-hook. */
#ifndef METADATA_AGENT_HOOK_H
#define METADATA_AGENT_HOOK_H

#define EVENT_CONNECT 1
#define EVENT_EXEC 2
#define EVENT_EXIT 3

#define PROTO_TCP 6
#define PROTO_UDP 17

struct hook_event {
	__u32 kind;        /* EVENT_* */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u16 family;      /* AF_INET (2) or AF_INET6 (10); 0 for exec/exit */
	__u8 protocol;     /* PROTO_TCP or PROTO_UDP */
	__u8 verdict;      /* 1 allowed, 0 denied (enforce mode) */
	__u64 cgroup_id;
	__u64 timestamp_ns;
	__u8 addr[16];     /* IPv4 in the first 4 bytes, network order */
	__u16 port;        /* host order */
	char comm[16];
	__u8 pad[6];
};

/* The layout of struct hook_event: its size and the offset of each field. */
#define HOOK_EVENT_SIZE 80
#define HOOK_EVENT_OFF_KIND 0
#define HOOK_EVENT_OFF_TGID 4
#define HOOK_EVENT_OFF_TID 8
#define HOOK_EVENT_OFF_UID 12
#define HOOK_EVENT_OFF_GID 16
#define HOOK_EVENT_OFF_FAMILY 20
#define HOOK_EVENT_OFF_PROTOCOL 22
#define HOOK_EVENT_OFF_VERDICT 23
#define HOOK_EVENT_OFF_CGROUP_ID 24
#define HOOK_EVENT_OFF_TIMESTAMP_NS 32
#define HOOK_EVENT_OFF_ADDR 40
#define HOOK_EVENT_OFF_PORT 56
#define HOOK_EVENT_OFF_COMM 58
#define HOOK_EVENT_OFF_PAD 74

#define HOOK_EVENT_FIELD_AT(field, offset) \
	_Static_assert(__builtin_offsetof(struct hook_event, field) == (offset), \
		       "struct hook_event: " #field " is not at " #offset)
_Static_assert(sizeof(struct hook_event) == HOOK_EVENT_SIZE, "struct hook_event: size");
HOOK_EVENT_FIELD_AT(kind, HOOK_EVENT_OFF_KIND);
HOOK_EVENT_FIELD_AT(tgid, HOOK_EVENT_OFF_TGID);
HOOK_EVENT_FIELD_AT(tid, HOOK_EVENT_OFF_TID);
HOOK_EVENT_FIELD_AT(uid, HOOK_EVENT_OFF_UID);
HOOK_EVENT_FIELD_AT(gid, HOOK_EVENT_OFF_GID);
HOOK_EVENT_FIELD_AT(family, HOOK_EVENT_OFF_FAMILY);
HOOK_EVENT_FIELD_AT(protocol, HOOK_EVENT_OFF_PROTOCOL);
HOOK_EVENT_FIELD_AT(verdict, HOOK_EVENT_OFF_VERDICT);
HOOK_EVENT_FIELD_AT(cgroup_id, HOOK_EVENT_OFF_CGROUP_ID);
HOOK_EVENT_FIELD_AT(timestamp_ns, HOOK_EVENT_OFF_TIMESTAMP_NS);
HOOK_EVENT_FIELD_AT(addr, HOOK_EVENT_OFF_ADDR);
HOOK_EVENT_FIELD_AT(port, HOOK_EVENT_OFF_PORT);
HOOK_EVENT_FIELD_AT(comm, HOOK_EVENT_OFF_COMM);
HOOK_EVENT_FIELD_AT(pad, HOOK_EVENT_OFF_PAD);

/* Verdict map values, written by the agent. */
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

/* Index of the settings array. */
#define SETTING_ENFORCE 0          /* 1: consult the verdict map */
#define SETTING_DEFAULT_VERDICT 1  /* VERDICT_* for processes without an entry */

#endif
