//! Loading, attaching and reading the BPF programs of `kernel-hook-ebpf` with aya.
//!
//! Requirements: root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON), a kernel with BPF ring buffers
//! (5.8+), cgroup v2 mounted (alone at `/sys/fs/cgroup`, or beside v1 at
//! `/sys/fs/cgroup/unified`) and tracefs for the sched tracepoints.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, TracePoint};
use aya::{Ebpf, EbpfError};
use tokio::sync::mpsc;

use crate::event::{ConnectEvent, HookEvent, Protocol};

/// How often the ring buffer is drained. The programs submit without waking the reader (a
/// wakeup per connect doubled a loopback connect's cost), so the reader polls.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CONNECT_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const TRACEPOINTS: [(&str, &str); 2] = [
    ("process_exec", "sched_process_exec"),
    ("process_exit", "sched_process_exit"),
];

const EVENT_CONNECT: u32 = 1;
const EVENT_EXEC: u32 = 2;
const EVENT_EXIT: u32 = 3;

/// Why the hook could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Not privileged enough to load BPF programs.
    #[error("loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): {0}")]
    Permission(String),
    /// No cgroup v2 hierarchy to attach to.
    #[error("no cgroup v2 hierarchy at {0} (mount cgroup2 there, or set hook.cgroupRoot)")]
    NoCgroup2(String),
    /// The kernel refused a program or map.
    #[error("the kernel refused the BPF programs: {0}")]
    Kernel(String),
}

impl From<EbpfError> for HookError {
    fn from(error: EbpfError) -> Self {
        classify(error.to_string())
    }
}

fn classify(text: String) -> HookError {
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        HookError::Permission(text)
    } else {
        HookError::Kernel(text)
    }
}

/// Program `name` of the object, as its type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, HookError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::Kernel(format!("program {name} missing")))?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// An error about program or map `name`, classified like the loader's.
fn program_error(name: &str, error: impl std::fmt::Display) -> HookError {
    classify(format!("{name}: {error}"))
}

/// The cgroup v2 root: `/sys/fs/cgroup` when it is cgroup2, else `/sys/fs/cgroup/unified`.
pub fn detect_cgroup_root() -> Result<PathBuf, HookError> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if is_cgroup2(Path::new(candidate)) {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(HookError::NoCgroup2(
        "/sys/fs/cgroup or /sys/fs/cgroup/unified".to_owned(),
    ))
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
        let error = std::io::Error::last_os_error();
        return Err(HookError::Kernel(format!(
            "no tracefs mounted, and mounting it at /sys/kernel/tracing failed: {error}"
        )));
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
            Self::Allow => 1,
            Self::Deny => 2,
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
        if !is_cgroup2(cgroup_root) {
            return Err(HookError::NoCgroup2(cgroup_root.display().to_string()));
        }
        let mut ebpf = Ebpf::load(kernel_hook_ebpf::object())?;
        let cgroup = File::open(cgroup_root)
            .map_err(|e| HookError::NoCgroup2(format!("{}: {e}", cgroup_root.display())))?;
        for name in CONNECT_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(|e| program_error(name, e))?;
            // Single: the other modes fail with EINVAL on kernels ≥ 5.7, where cgroup links
            // coexist anyway.
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, e))?;
        }
        ensure_tracefs()?;
        for (name, tracepoint) in TRACEPOINTS {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(|e| program_error(name, e))?;
            program
                .attach("sched", tracepoint)
                .map_err(|e| program_error(name, e))?;
        }
        let map = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| HookError::Kernel(format!("map {name} missing")))
        };
        let ring =
            RingBuf::try_from(map(&mut ebpf, "EVENTS")?).map_err(|e| program_error("EVENTS", e))?;
        let lost =
            PerCpuArray::try_from(map(&mut ebpf, "LOST")?).map_err(|e| program_error("LOST", e))?;
        let verdicts = HashMap::try_from(map(&mut ebpf, "VERDICTS")?)
            .map_err(|e| program_error("VERDICTS", e))?;
        let settings = Array::try_from(map(&mut ebpf, "SETTINGS")?)
            .map_err(|e| program_error("SETTINGS", e))?;
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

    /// The cgroup the programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Enforce mode (consult verdicts) or observe mode (let everything through), and the
    /// verdict for processes without one.
    pub fn set_mode(&mut self, enforce: bool, default: Verdict) -> Result<(), HookError> {
        self.settings
            .set(0, u32::from(enforce), 0)
            .and_then(|()| self.settings.set(1, default.value(), 0))
            .map_err(|e| HookError::Kernel(format!("SETTINGS: {e}")))
    }

    /// Sets the verdict of process `tgid`. The kernel drops it when the process exits.
    pub fn set_verdict(&mut self, tgid: u32, verdict: Verdict) -> Result<(), HookError> {
        self.verdicts
            .insert(tgid, verdict.value(), 0)
            .map_err(|e| HookError::Kernel(format!("VERDICTS: {e}")))
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

/// Decodes one `struct hook_event` (see `kernel-hook-ebpf/bpf/hook.h`).
pub fn parse_event(record: &[u8]) -> Option<HookEvent> {
    if record.len() < kernel_hook_ebpf::EVENT_SIZE {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default());
    let tgid = u32_at(4);
    match u32_at(0) {
        EVENT_EXEC => Some(HookEvent::Exec {
            tgid,
            timestamp_ns: u64_at(32),
        }),
        EVENT_EXIT => Some(HookEvent::Exit { tgid }),
        EVENT_CONNECT => {
            let family = u16::from_le_bytes([record[20], record[21]]);
            let address: [u8; 16] = record[40..56].try_into().ok()?;
            let destination = match family {
                2 => IpAddr::V4(Ipv4Addr::new(
                    address[0], address[1], address[2], address[3],
                )),
                10 => IpAddr::V6(Ipv6Addr::from(address)),
                _ => return None,
            };
            let comm = &record[58..74];
            let comm_end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
            Some(HookEvent::Connect(ConnectEvent {
                tgid,
                tid: u32_at(8),
                uid: u32_at(12),
                gid: u32_at(16),
                cgroup_id: u64_at(24),
                comm: String::from_utf8_lossy(&comm[..comm_end]).into_owned(),
                protocol: if record[22] == 17 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                destination,
                port: u16::from_le_bytes([record[56], record[57]]),
                timestamp_ns: u64_at(32),
                allowed: record[23] != 0,
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_connect_record() {
        let mut record = [0u8; kernel_hook_ebpf::EVENT_SIZE];
        record[0..4].copy_from_slice(&1u32.to_le_bytes());
        record[4..8].copy_from_slice(&4242u32.to_le_bytes());
        record[8..12].copy_from_slice(&4243u32.to_le_bytes());
        record[12..16].copy_from_slice(&1000u32.to_le_bytes());
        record[20..22].copy_from_slice(&10u16.to_le_bytes());
        record[22] = 17;
        record[23] = 1;
        record[24..32].copy_from_slice(&77u64.to_le_bytes());
        record[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        record[56..58].copy_from_slice(&8443u16.to_le_bytes());
        record[58..62].copy_from_slice(b"curl");
        let Some(HookEvent::Connect(event)) = parse_event(&record) else {
            panic!("not a connect");
        };
        assert_eq!(event.tgid, 4242);
        assert_eq!(event.tid, 4243);
        assert_eq!(event.uid, 1000);
        assert_eq!(event.cgroup_id, 77);
        assert_eq!(event.protocol, Protocol::Udp);
        assert_eq!(event.destination, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(event.port, 8443);
        assert_eq!(event.comm, "curl");
        assert!(event.allowed);
        assert!(parse_event(&record[..40]).is_none());
        record[0] = 3;
        assert_eq!(parse_event(&record), Some(HookEvent::Exit { tgid: 4242 }));
    }
}
