/* The records and map values shared by the BPF programs (hook.bpf.c) and user space (the
 * kernel-hook crate, which mirrors every struct here). Host byte order, natural alignment.
 *
 * Every numeric #define here is exported to Rust by kernel-hook-ebpf's build.rs (the
 * kernel_hook_ebpf::abi module), so both sides share one set of numbers. Each struct's layout
 * is spelled out as <STRUCT>_SIZE and <STRUCT>_OFF_<FIELD> numbers, held to the struct by the
 * _Static_asserts below whenever clang compiles this header, and to its Rust mirror by const
 * assertions whenever Rust compiles kernel-hook. */
#ifndef METADATA_AGENT_HOOK_H
#define METADATA_AGENT_HOOK_H

#define LAYOUT_SIZE(type, size) \
	_Static_assert(sizeof(struct type) == (size), "struct " #type ": size is not " #size)
#define LAYOUT_FIELD(type, field, offset) \
	_Static_assert(__builtin_offsetof(struct type, field) == (offset), \
		       "struct " #type ": " #field " is not at " #offset)

#define EVENT_CONNECT 1
#define EVENT_EXEC 2
#define EVENT_EXIT 3
#define EVENT_CGROUP 4  /* a process (tgid) was moved to another cgroup, by itself or another */
#define EVENT_FORK 5    /* a new process (tgid) was forked by ppid */

#define PROTO_TCP 6
#define PROTO_UDP 17

/* Verdicts: in rules, in rule set defaults, for pending processes. */
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

/* How a connect's verdict was reached (hook_event.decision). */
#define DECISION_OBSERVE 0  /* observe mode: nothing was judged */
#define DECISION_EXEMPT 1   /* the agent's own process */
#define DECISION_PENDING 2  /* no rule set yet: SETTING_PENDING_VERDICT */
#define DECISION_RULE 3     /* a rule covering the destination */
#define DECISION_DEFAULT 4  /* no rule covered it: the rule set's default */

/* Rule set ids with a fixed meaning; the agent numbers the others from RULESET_FIRST. */
#define RULESET_PENDING 0   /* not judged yet */
#define RULESET_EXEMPT 1    /* never refused (the agent itself) */
#define RULESET_FIRST 2

/* hook_event.policy and ruleset.default_policy when no policy decided. */
#define POLICY_NONE 65535

/* Rules one address prefix of one rule set may hold. */
#define RULES_PER_PREFIX 32

/* Index of the settings array. */
#define SETTING_ENFORCE 0          /* 1: judge connects */
#define SETTING_PENDING_VERDICT 1  /* VERDICT_* for processes without a rule set */
#define SETTINGS_COUNT 2

/* Clock ticks per second of /proc/<pid>/stat (USER_HZ): process start times are kept in them,
 * so user space reads the same number from procfs. */
#define USER_HZ 100

/* One ring buffer record. */
struct hook_event {
	__u32 kind;        /* EVENT_* */
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u16 family;      /* AF_INET (2) or AF_INET6 (10); 0 for exec/exit */
	__u8 protocol;     /* PROTO_TCP or PROTO_UDP */
	__u8 verdict;      /* 1 allowed, 0 refused */
	__u64 cgroup_id;
	__u64 timestamp_ns;
	__u8 addr[16];     /* IPv4 in the first 4 bytes, network order */
	__u16 port;        /* host order */
	char comm[16];
	__u16 policy;      /* connect: the deciding rule's policy, or POLICY_NONE */
	__u32 ruleset;     /* connect: the rule set judged by; exec: the one found for the image */
	__u32 generation;  /* exec: the process's new generation */
	__u8 decision;     /* connect: DECISION_* */
	__u8 pad[3];
	__u32 euid;        /* effective user id of the calling thread */
	__u32 egid;        /* effective group id of the calling thread */
	__u32 ppid;        /* fork: the parent, the process that forked it */
	__u32 pad2;
	__u64 start;       /* fork, exec, exit: the process's start time in USER_HZ ticks since boot */
	__u64 parent_start;/* fork: the parent's */
};

#define HOOK_EVENT_SIZE 120
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
#define HOOK_EVENT_OFF_POLICY 74
#define HOOK_EVENT_OFF_RULESET 76
#define HOOK_EVENT_OFF_GENERATION 80
#define HOOK_EVENT_OFF_DECISION 84
#define HOOK_EVENT_OFF_PAD 85
#define HOOK_EVENT_OFF_EUID 88
#define HOOK_EVENT_OFF_EGID 92
#define HOOK_EVENT_OFF_PPID 96
#define HOOK_EVENT_OFF_PAD2 100
#define HOOK_EVENT_OFF_START 104
#define HOOK_EVENT_OFF_PARENT_START 112

LAYOUT_SIZE(hook_event, HOOK_EVENT_SIZE);
LAYOUT_FIELD(hook_event, kind, HOOK_EVENT_OFF_KIND);
LAYOUT_FIELD(hook_event, tgid, HOOK_EVENT_OFF_TGID);
LAYOUT_FIELD(hook_event, tid, HOOK_EVENT_OFF_TID);
LAYOUT_FIELD(hook_event, uid, HOOK_EVENT_OFF_UID);
LAYOUT_FIELD(hook_event, gid, HOOK_EVENT_OFF_GID);
LAYOUT_FIELD(hook_event, family, HOOK_EVENT_OFF_FAMILY);
LAYOUT_FIELD(hook_event, protocol, HOOK_EVENT_OFF_PROTOCOL);
LAYOUT_FIELD(hook_event, verdict, HOOK_EVENT_OFF_VERDICT);
LAYOUT_FIELD(hook_event, cgroup_id, HOOK_EVENT_OFF_CGROUP_ID);
LAYOUT_FIELD(hook_event, timestamp_ns, HOOK_EVENT_OFF_TIMESTAMP_NS);
LAYOUT_FIELD(hook_event, addr, HOOK_EVENT_OFF_ADDR);
LAYOUT_FIELD(hook_event, port, HOOK_EVENT_OFF_PORT);
LAYOUT_FIELD(hook_event, comm, HOOK_EVENT_OFF_COMM);
LAYOUT_FIELD(hook_event, policy, HOOK_EVENT_OFF_POLICY);
LAYOUT_FIELD(hook_event, ruleset, HOOK_EVENT_OFF_RULESET);
LAYOUT_FIELD(hook_event, generation, HOOK_EVENT_OFF_GENERATION);
LAYOUT_FIELD(hook_event, decision, HOOK_EVENT_OFF_DECISION);
LAYOUT_FIELD(hook_event, pad, HOOK_EVENT_OFF_PAD);
LAYOUT_FIELD(hook_event, euid, HOOK_EVENT_OFF_EUID);
LAYOUT_FIELD(hook_event, egid, HOOK_EVENT_OFF_EGID);
LAYOUT_FIELD(hook_event, ppid, HOOK_EVENT_OFF_PPID);
LAYOUT_FIELD(hook_event, pad2, HOOK_EVENT_OFF_PAD2);
LAYOUT_FIELD(hook_event, start, HOOK_EVENT_OFF_START);
LAYOUT_FIELD(hook_event, parent_start, HOOK_EVENT_OFF_PARENT_START);

/* PROCS[tgid], kept by the programs: what the kernel knows of a process. Created at fork (and,
 * for a process older than the hook, at its first connect or by the agent), renewed at each
 * exec, deleted when its last thread exits. */
struct proc_state {
	__u64 start;       /* start time in USER_HZ ticks since boot (/proc/<pid>/stat field 22) */
	__u64 exec_ns;     /* monotonic time of its last exec; 0 when none was seen */
	__u32 generation;  /* execs seen: a verdict holds only for the generation it was made for */
	__u32 ruleset;     /* the kernel's own rule set: the exec-time identity's, or at fork the
			    * parent's; RULESET_PENDING when none is known */
	__u32 moves;       /* moves of any of its threads to another cgroup (any hierarchy) since
			    * the entry was made: with generation, what tells user space that what
			    * it read of the process (executable, cgroups) still holds */
	__u32 pad;
};

#define PROC_STATE_SIZE 32
#define PROC_STATE_OFF_START 0
#define PROC_STATE_OFF_EXEC_NS 8
#define PROC_STATE_OFF_GENERATION 16
#define PROC_STATE_OFF_RULESET 20
#define PROC_STATE_OFF_MOVES 24
#define PROC_STATE_OFF_PAD 28

LAYOUT_SIZE(proc_state, PROC_STATE_SIZE);
LAYOUT_FIELD(proc_state, start, PROC_STATE_OFF_START);
LAYOUT_FIELD(proc_state, exec_ns, PROC_STATE_OFF_EXEC_NS);
LAYOUT_FIELD(proc_state, generation, PROC_STATE_OFF_GENERATION);
LAYOUT_FIELD(proc_state, ruleset, PROC_STATE_OFF_RULESET);
LAYOUT_FIELD(proc_state, moves, PROC_STATE_OFF_MOVES);
LAYOUT_FIELD(proc_state, pad, PROC_STATE_OFF_PAD);

/* VERDICTS[tgid], written by the agent: the rule set of one process image. It holds while the
 * process's PROCS entry has the same start and generation; otherwise PROCS's own rule set does. */
struct verdict {
	__u64 start;
	__u64 stamp;       /* the agent's ordering of its writes; the programs ignore it */
	__u32 generation;
	__u32 ruleset;
};

#define VERDICT_SIZE 24
#define VERDICT_OFF_START 0
#define VERDICT_OFF_STAMP 8
#define VERDICT_OFF_GENERATION 16
#define VERDICT_OFF_RULESET 20

LAYOUT_SIZE(verdict, VERDICT_SIZE);
LAYOUT_FIELD(verdict, start, VERDICT_OFF_START);
LAYOUT_FIELD(verdict, stamp, VERDICT_OFF_STAMP);
LAYOUT_FIELD(verdict, generation, VERDICT_OFF_GENERATION);
LAYOUT_FIELD(verdict, ruleset, VERDICT_OFF_RULESET);

/* RULESETS[id]: what a rule set decides where none of its rules covers a destination. */
struct ruleset {
	__u32 default_verdict;  /* VERDICT_* */
	__u32 default_policy;   /* the policy that decided it, or POLICY_NONE */
};

#define RULESET_SIZE 8
#define RULESET_OFF_DEFAULT_VERDICT 0
#define RULESET_OFF_DEFAULT_POLICY 4

LAYOUT_SIZE(ruleset, RULESET_SIZE);
LAYOUT_FIELD(ruleset, default_verdict, RULESET_OFF_DEFAULT_VERDICT);
LAYOUT_FIELD(ruleset, default_policy, RULESET_OFF_DEFAULT_POLICY);

/* The key of RULES, an LPM trie: a rule set and an address prefix. prefixlen counts the bits
 * of what follows it: always the 32 of the rule set, then the address prefix. */
struct rule_key {
	__u32 prefixlen;   /* 32 + the address prefix length (0 to 128) */
	__u32 ruleset;
	__u8 addr[16];     /* IPv6; IPv4 mapped into ::ffff:0:0/96 */
};

#define RULE_KEY_SIZE 24
#define RULE_KEY_OFF_PREFIXLEN 0
#define RULE_KEY_OFF_RULESET 4
#define RULE_KEY_OFF_ADDR 8

LAYOUT_SIZE(rule_key, RULE_KEY_SIZE);
LAYOUT_FIELD(rule_key, prefixlen, RULE_KEY_OFF_PREFIXLEN);
LAYOUT_FIELD(rule_key, ruleset, RULE_KEY_OFF_RULESET);
LAYOUT_FIELD(rule_key, addr, RULE_KEY_OFF_ADDR);

/* One rule: a port range and a protocol, and what to do. */
struct rule {
	__u16 port_first;
	__u16 port_last;
	__u8 protocol;     /* PROTO_TCP, PROTO_UDP, or 0 for both */
	__u8 verdict;      /* VERDICT_* */
	__u16 policy;      /* the policy the rule comes from */
};

#define RULE_SIZE 8
#define RULE_OFF_PORT_FIRST 0
#define RULE_OFF_PORT_LAST 2
#define RULE_OFF_PROTOCOL 4
#define RULE_OFF_VERDICT 5
#define RULE_OFF_POLICY 6

LAYOUT_SIZE(rule, RULE_SIZE);
LAYOUT_FIELD(rule, port_first, RULE_OFF_PORT_FIRST);
LAYOUT_FIELD(rule, port_last, RULE_OFF_PORT_LAST);
LAYOUT_FIELD(rule, protocol, RULE_OFF_PROTOCOL);
LAYOUT_FIELD(rule, verdict, RULE_OFF_VERDICT);
LAYOUT_FIELD(rule, policy, RULE_OFF_POLICY);

/* The value of RULES: every rule of the rule set whose address range holds the key's prefix,
 * in precedence order (the agent copies a wider range's rules into each narrower prefix, so the
 * longest matching prefix holds all that apply). The first rule covering the port and protocol
 * decides. */
struct rule_list {
	__u32 count;
	__u32 pad;
	struct rule rules[RULES_PER_PREFIX];
};

#define RULE_LIST_SIZE 264
#define RULE_LIST_OFF_COUNT 0
#define RULE_LIST_OFF_PAD 4
#define RULE_LIST_OFF_RULES 8

LAYOUT_SIZE(rule_list, RULE_LIST_SIZE);
LAYOUT_FIELD(rule_list, count, RULE_LIST_OFF_COUNT);
LAYOUT_FIELD(rule_list, pad, RULE_LIST_OFF_PAD);
LAYOUT_FIELD(rule_list, rules, RULE_LIST_OFF_RULES);

/* The key of IMAGES: an identity the kernel knows at exec, mapped to the rule set every process
 * with it gets from its first instruction. Looked up with the cgroup and the binary, then the
 * cgroup alone (binary fields 0), then the binary alone (cgroup_id 0). */
struct image_key {
	__u64 cgroup_id;   /* cgroup v2 id; 0: any */
	__u64 ino;         /* the executable's inode number; 0 with dev 0: any */
	__s64 ctime_sec;   /* its inode change time: a rewrite in place is another binary */
	__u32 ctime_nsec;
	__u32 dev;         /* its filesystem's device, kernel encoding (major << 20 | minor) */
};

#define IMAGE_KEY_SIZE 32
#define IMAGE_KEY_OFF_CGROUP_ID 0
#define IMAGE_KEY_OFF_INO 8
#define IMAGE_KEY_OFF_CTIME_SEC 16
#define IMAGE_KEY_OFF_CTIME_NSEC 24
#define IMAGE_KEY_OFF_DEV 28

LAYOUT_SIZE(image_key, IMAGE_KEY_SIZE);
LAYOUT_FIELD(image_key, cgroup_id, IMAGE_KEY_OFF_CGROUP_ID);
LAYOUT_FIELD(image_key, ino, IMAGE_KEY_OFF_INO);
LAYOUT_FIELD(image_key, ctime_sec, IMAGE_KEY_OFF_CTIME_SEC);
LAYOUT_FIELD(image_key, ctime_nsec, IMAGE_KEY_OFF_CTIME_NSEC);
LAYOUT_FIELD(image_key, dev, IMAGE_KEY_OFF_DEV);

/* Map sizes. */
#define MAX_PROCS 262144
#define MAX_RULESETS 65536
#define MAX_RULE_PREFIXES 131072
#define MAX_IMAGES 65536
/* CHANGES: one change counter per bucket of processes (tgid & (CHANGE_BUCKETS - 1)). */
#define CHANGE_BUCKETS 65536

#endif
