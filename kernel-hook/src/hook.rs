//! Loading, attaching and reading the BPF programs of `kernel-hook-ebpf` with aya.
//!
//! Requirements: root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON), a kernel with BPF ring buffers
//! (5.8+), cgroup v2 mounted (alone at `/sys/fs/cgroup`, or beside v1 at
//! `/sys/fs/cgroup/unified`) and tracefs for the sched tracepoints.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, TracePoint};
use tokio::sync::mpsc;

use kernel_hook_ebpf::abi;

use crate::event::HookEvent;
use crate::record::parse_event;

/// How often the ring buffer is drained. The programs submit without waking the reader (a
/// wakeup per connect doubled a loopback connect's cost), so the reader polls.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CONNECT_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const TRACEPOINTS: [(&str, &str); 2] = [
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
];

/// Why the hook could not be attached or driven.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Not privileged enough to load BPF programs (the kernel answered `EPERM` or `EACCES`).
    #[error(
        "{what}: loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, and \
         CAP_SYS_ADMIN to mount tracefs)"
    )]
    Permission {
        /// What was being done.
        what: String,
        /// The kernel's refusal.
        #[source]
        source: BoxError,
    },
    /// No cgroup v2 hierarchy to attach to.
    #[error("no cgroup v2 hierarchy at {path} (mount cgroup2 there, or set hook.cgroupRoot)")]
    NoCgroup2 {
        /// Where one was looked for.
        path: String,
        /// Why it could not be opened, when it could not.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The kernel refused a program, a map or an attachment for another reason.
    #[error("the kernel refused {what}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: BoxError,
    },
    /// The embedded BPF object lacks a program or map this crate needs.
    #[error("the BPF object has no {0}")]
    Missing(String),
}

/// Any error with its causes.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl HookError {
    /// The error of a BPF operation on `what`: [`HookError::Permission`] when the kernel
    /// answered `EPERM` or `EACCES` anywhere in `error`'s causes, else [`HookError::Kernel`].
    pub fn from_bpf(what: impl Into<String>, error: impl Into<BoxError>) -> Self {
        let (what, source) = (what.into(), error.into());
        if denied_by_the_kernel(&*source) {
            Self::Permission { what, source }
        } else {
            Self::Kernel { what, source }
        }
    }

    /// Whether the kernel refused for lack of privilege.
    pub fn is_permission(&self) -> bool {
        matches!(self, Self::Permission { .. })
    }
}

/// Whether `error` or one of its causes is an `EPERM` or `EACCES` from a system call.
fn denied_by_the_kernel(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// Program `name` of the object, as its type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, HookError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(|e| HookError::from_bpf(format!("program {name}"), e))
}

/// The cgroup v2 root: `/sys/fs/cgroup` when it is cgroup2, else `/sys/fs/cgroup/unified`.
pub fn detect_cgroup_root() -> Result<PathBuf, HookError> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if is_cgroup2(Path::new(candidate)) {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(HookError::NoCgroup2 {
        path: "/sys/fs/cgroup or /sys/fs/cgroup/unified".to_owned(),
        source: None,
    })
}

/// The kernel's monotonic clock in nanoseconds, the clock of the events' `timestamp_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into a timespec we own.
    unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }
}

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// Mounts tracefs at `/sys/kernel/tracing` when no tracefs is mounted (minimal systems and
/// containers often lack it); the sched tracepoints are attached through it.
fn ensure_tracefs() -> Result<(), HookError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("tracefs"))
    {
        return Ok(());
    }
    // SAFETY: all pointers are NUL-terminated literals; mount does not keep them.
    let mounted = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(HookError::from_bpf(
            "mounting tracefs at /sys/kernel/tracing (none is mounted)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// What the hook does with a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it with `EPERM` (enforce mode only).
    Deny,
}

impl Verdict {
    fn value(self) -> u32 {
        match self {
            Self::Allow => abi::VERDICT_ALLOW,
            Self::Deny => abi::VERDICT_DENY,
        }
    }
}

/// The attached hook. Dropping it detaches every program (their links live in its file
/// descriptors).
pub struct Hook {
    ebpf: Ebpf,
    cgroup_root: PathBuf,
    verdicts: HashMap<MapData, u32, u32>,
    settings: Array<MapData, u32>,
}

/// The ring buffer's reading end, moved into the task that drains it.
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: u64,
}

impl Hook {
    /// Loads the programs and attaches them to `cgroup_root` (cgroup v2) and the sched
    /// tracepoints. Returns the hook and the reader of its events.
    pub fn attach(cgroup_root: &Path) -> Result<(Self, EventReader), HookError> {
        let no_cgroup2 = |source| HookError::NoCgroup2 {
            path: cgroup_root.display().to_string(),
            source,
        };
        if !is_cgroup2(cgroup_root) {
            return Err(no_cgroup2(None));
        }
        let mut ebpf = Ebpf::load(kernel_hook_ebpf::object())
            .map_err(|e| HookError::from_bpf("loading the BPF object", e))?;
        let cgroup = File::open(cgroup_root).map_err(|e| no_cgroup2(Some(e)))?;
        for name in CONNECT_PROGRAMS {
            let failed = |e| HookError::from_bpf(format!("program {name}"), e);
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(failed)?;
            // Single: the other modes fail with EINVAL on kernels ≥ 5.7, where cgroup links
            // coexist anyway.
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(failed)?;
        }
        ensure_tracefs()?;
        for (name, tracepoint) in TRACEPOINTS {
            let failed = |e| HookError::from_bpf(format!("program {name}"), e);
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(failed)?;
            program.attach("sched", tracepoint).map_err(failed)?;
        }
        let mut map = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| HookError::Missing(format!("map {name}")))
        };
        let map_error = |name: &'static str| move |e| HookError::from_bpf(format!("map {name}"), e);
        let ring = RingBuf::try_from(map("EVENTS")?).map_err(map_error("EVENTS"))?;
        let lost = PerCpuArray::try_from(map("LOST")?).map_err(map_error("LOST"))?;
        let verdicts = HashMap::try_from(map("VERDICTS")?).map_err(map_error("VERDICTS"))?;
        let settings = Array::try_from(map("SETTINGS")?).map_err(map_error("SETTINGS"))?;
        Ok((
            Self {
                ebpf,
                cgroup_root: cgroup_root.to_owned(),
                verdicts,
                settings,
            },
            EventReader {
                ring,
                lost,
                lost_seen: 0,
            },
        ))
    }

    /// The kernel's ids of the loaded programs (as `bpftool prog` lists them), which tell them
    /// from the programs of another agent on the same node.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.id())
            .collect()
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Enforce mode (consult verdicts) or observe mode (let everything through), and the
    /// verdict for processes without one.
    pub fn set_mode(&mut self, enforce: bool, default: Verdict) -> Result<(), HookError> {
        self.settings
            .set(abi::SETTING_ENFORCE, u32::from(enforce), 0)
            .and_then(|()| {
                self.settings
                    .set(abi::SETTING_DEFAULT_VERDICT, default.value(), 0)
            })
            .map_err(|e| HookError::from_bpf("map SETTINGS", e))
    }

    /// Sets the verdict of process `tgid`. The kernel drops it when the process exits.
    pub fn set_verdict(&mut self, tgid: u32, verdict: Verdict) -> Result<(), HookError> {
        self.verdicts
            .insert(tgid, verdict.value(), 0)
            .map_err(|e| HookError::from_bpf("map VERDICTS", e))
    }

    /// Detaches every program now.
    pub fn detach(self) {
        drop(self.ebpf);
    }
}

impl EventReader {
    /// Moves every queued event into `sink`; returns how many the kernel reported lost since
    /// the last call.
    pub fn drain(&mut self, mut sink: impl FnMut(HookEvent)) -> u64 {
        while let Some(record) = self.ring.next() {
            if let Some(event) = parse_event(&record) {
                sink(event);
            }
        }
        let lost: u64 = self
            .lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(self.lost_seen);
        let new = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        new
    }

    /// Drains every [`DRAIN_INTERVAL`] into `events` until it closes. An event the channel
    /// has no room for is counted by `dropped`; kernel losses by `lost`.
    pub async fn run(
        mut self,
        events: mpsc::Sender<HookEvent>,
        lost: impl Fn(u64) + Send,
        dropped: impl Fn(u64) + Send,
    ) {
        let mut ticker = tokio::time::interval(DRAIN_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if events.is_closed() {
                break;
            }
            let mut full = 0;
            let new_lost = self.drain(|event| {
                if events.try_send(event).is_err() {
                    full += 1;
                }
            });
            if new_lost > 0 {
                lost(new_lost);
            }
            if full > 0 {
                dropped(full);
            }
        }
    }
}
