/* The event record shared by the BPF programs (hook.bpf.c) and user space (kernel-hook's
 * event.rs, which mirrors this layout byte for byte). Little-endian, natural alignment. */
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

/* Verdict map values, written by the agent. */
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

/* Index of the settings array. */
#define SETTING_ENFORCE 0          /* 1: consult the verdict map */
#define SETTING_DEFAULT_VERDICT 1  /* VERDICT_* for processes without an entry */

#endif
