//! Timed scenarios: what a cloud announces to an instance (a spot interruption, a scheduled
//! event, a preemption), appearing in the metadata at a chosen moment, as on the real service.
//!
//! A scenario is written `NAME[:ARG][@WHEN]`: `WHEN` is a delay from the mock's start (or from
//! the moment it is posted to the control API), e.g. `2s`, or a time (`2026-12-01T18:00:00Z`);
//! without it, at once.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::State;

/// What a scenario does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// EC2 spot interruption notice: `spot/instance-action` (`terminate`, `stop` or
    /// `hibernate`, with the time two minutes ahead) and, for `terminate`,
    /// `spot/termination-time`.
    Ec2SpotInterruption(String),
    /// EC2 rebalance recommendation: `events/recommendations/rebalance`.
    Ec2Rebalance,
    /// An EC2 scheduled event with this code (`system-reboot`, `instance-reboot`,
    /// `system-maintenance`, `instance-retirement`, `instance-stop`), a week ahead:
    /// `events/maintenance/scheduled`.
    Ec2ScheduledEvent(String),
    /// EC2 Auto Scaling: `autoscaling/target-lifecycle-state` becomes this state.
    Ec2AsgLifecycle(String),
    /// An Azure scheduled event of this type (`Preempt`, `Terminate`, `Reboot`, `Redeploy`,
    /// `Freeze`), until acknowledged by `POST` `StartRequests`.
    AzureScheduledEvent(String),
    /// GCP preemption: `preempted` becomes `TRUE`, `maintenance-event` becomes
    /// `TERMINATE_ON_HOST_MAINTENANCE`.
    GcpPreemption,
    /// GCP `maintenance-event` becomes this value (`MIGRATE_ON_HOST_MAINTENANCE` by default;
    /// `NONE` ends it).
    GcpMaintenance(String),
}

/// When a scenario fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after it was started.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

/// A scenario, as parsed from `NAME[:ARG][@WHEN]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// What it does.
    pub kind: Kind,
    /// When.
    pub when: When,
    /// How it was written.
    pub spec: String,
}

/// The scenario names, as `--help` and errors list them.
pub const NAMES: &[&str] = &[
    "ec2-spot-interruption",
    "ec2-rebalance",
    "ec2-scheduled-event",
    "ec2-asg-lifecycle",
    "azure-scheduled-event",
    "gcp-preemption",
    "gcp-maintenance",
];

fn one_of(name: &str, arg: &str, allowed: &[&str]) -> Result<String, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(arg))
        .map(|a| (*a).to_owned())
        .ok_or_else(|| format!("{name}: {arg:?} is not one of {}", allowed.join(", ")))
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (head, when) = match spec.split_once('@') {
            Some((head, when)) => (head, Some(when)),
            None => (spec, None),
        };
        let (name, arg) = match head.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (head, None),
        };
        let context = |message: String| format!("scenario {spec:?}: {message}");
        let no_arg = |kind: Kind| match arg {
            None => Ok(kind),
            Some(arg) => Err(format!("{name} takes no argument (got {arg:?})")),
        };
        let kind = match name {
            "ec2-spot-interruption" => Kind::Ec2SpotInterruption(one_of(
                name,
                arg.unwrap_or("terminate"),
                &["terminate", "stop", "hibernate"],
            )?),
            "ec2-rebalance" => no_arg(Kind::Ec2Rebalance)?,
            "ec2-scheduled-event" => Kind::Ec2ScheduledEvent(one_of(
                name,
                arg.unwrap_or("system-reboot"),
                &[
                    "system-reboot",
                    "instance-reboot",
                    "system-maintenance",
                    "instance-retirement",
                    "instance-stop",
                ],
            )?),
            "ec2-asg-lifecycle" => {
                let state = arg.unwrap_or("Terminated");
                if state.is_empty() || state.contains(char::is_whitespace) {
                    return Err(context(format!("{state:?} is not a lifecycle state")));
                }
                Kind::Ec2AsgLifecycle(state.to_owned())
            }
            "azure-scheduled-event" => Kind::AzureScheduledEvent(one_of(
                name,
                arg.unwrap_or("Reboot"),
                &["Preempt", "Terminate", "Reboot", "Redeploy", "Freeze"],
            )?),
            "gcp-preemption" => no_arg(Kind::GcpPreemption)?,
            "gcp-maintenance" => Kind::GcpMaintenance(one_of(
                name,
                arg.unwrap_or("MIGRATE_ON_HOST_MAINTENANCE"),
                &[
                    "MIGRATE_ON_HOST_MAINTENANCE",
                    "TERMINATE_ON_HOST_MAINTENANCE",
                    "NONE",
                ],
            )?),
            other => {
                return Err(context(format!(
                    "unknown scenario {other:?}; known: {}",
                    NAMES.join(", ")
                )));
            }
        };
        let when = match when {
            None => When::After(Duration::ZERO),
            Some(text) => match humantime::parse_duration(text) {
                Ok(delay) => When::After(delay),
                Err(_) => When::At(humantime::parse_rfc3339_weak(text).map_err(|_| {
                    context(format!(
                        "{text:?} is neither a delay (2s, 1m30s) nor a time (2026-12-01T18:00:00Z)"
                    ))
                })?),
            },
        };
        Ok(Self {
            kind,
            when,
            spec: spec.to_owned(),
        })
    }
}

impl Scenario {
    /// When it fires, for a scenario started at `started`.
    pub fn fires_at(&self, started: SystemTime) -> SystemTime {
        match self.when {
            When::After(delay) => started + delay,
            When::At(time) => time,
        }
    }

    /// Makes it happen in `state`, at `now`.
    pub(crate) fn apply(&self, state: &mut State, now: SystemTime) {
        let fixtures = std::sync::Arc::make_mut(&mut state.fixtures);
        match &self.kind {
            Kind::Ec2SpotInterruption(action) => {
                let time = rfc3339(now + Duration::from_secs(120));
                set(
                    &mut fixtures.ec2,
                    &["meta-data", "spot", "instance-action"],
                    json!(json!({"action": action, "time": time}).to_string()),
                );
                if action == "terminate" {
                    set(
                        &mut fixtures.ec2,
                        &["meta-data", "spot", "termination-time"],
                        json!(time),
                    );
                }
                set(
                    &mut fixtures.ec2,
                    &["meta-data", "instance-life-cycle"],
                    json!("spot"),
                );
            }
            Kind::Ec2Rebalance => set(
                &mut fixtures.ec2,
                &["meta-data", "events", "recommendations", "rebalance"],
                json!(json!({"noticeTime": rfc3339(now)}).to_string()),
            ),
            Kind::Ec2ScheduledEvent(code) => {
                let not_before = now + Duration::from_secs(7 * 86_400);
                let event = json!({
                    "NotBefore": aws_time(not_before),
                    "Code": code,
                    "Description": format!("The instance is scheduled for {code}"),
                    "EventId": format!("instance-event-{}", &crate::random_hex(17)[..17]),
                    "NotAfter": aws_time(not_before + Duration::from_secs(2 * 3600)),
                    "NotBeforeDeadline": aws_time(not_before + Duration::from_secs(7 * 86_400)),
                    "State": "active",
                });
                let path = ["meta-data", "events", "maintenance", "scheduled"];
                let mut events: Vec<Value> = get(&fixtures.ec2, &path)
                    .and_then(Value::as_str)
                    .and_then(|text| serde_json::from_str(text).ok())
                    .unwrap_or_default();
                events.push(event);
                set(
                    &mut fixtures.ec2,
                    &path,
                    json!(Value::Array(events).to_string()),
                );
            }
            Kind::Ec2AsgLifecycle(lifecycle) => set(
                &mut fixtures.ec2,
                &["meta-data", "autoscaling", "target-lifecycle-state"],
                json!(lifecycle),
            ),
            Kind::AzureScheduledEvent(event_type) => {
                let vm = fixtures.azure["instance"]["compute"]["name"]
                    .as_str()
                    .unwrap_or("vm")
                    .to_owned();
                let lead = if event_type == "Preempt" { 30 } else { 15 * 60 };
                let duration = match event_type.as_str() {
                    "Freeze" => 9,
                    "Reboot" | "Redeploy" => -1,
                    _ => -1,
                };
                state.azure_events.add(json!({
                    "EventId": crate::random_uuid(),
                    "EventType": event_type,
                    "ResourceType": "VirtualMachine",
                    "Resources": [vm],
                    "EventStatus": "Scheduled",
                    "NotBefore": httpdate::fmt_http_date(now + Duration::from_secs(lead)),
                    "Description": format!("Virtual machine is going to be {}", match event_type.as_str() {
                        "Preempt" => "preempted",
                        "Terminate" => "deleted",
                        "Reboot" => "restarted",
                        "Redeploy" => "redeployed to another host",
                        _ => "paused for a few seconds",
                    }),
                    "EventSource": "Platform",
                    "DurationInSeconds": duration,
                }));
            }
            Kind::GcpPreemption => {
                fixtures.gcp["instance"]["preempted"] = json!("TRUE");
                fixtures.gcp["instance"]["maintenanceEvent"] =
                    json!("TERMINATE_ON_HOST_MAINTENANCE");
            }
            Kind::GcpMaintenance(value) => {
                fixtures.gcp["instance"]["maintenanceEvent"] = json!(value);
            }
        }
    }
}

/// A scenario's progress, as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// How it was written.
    pub spec: String,
    /// When it fires (or fired), RFC 3339.
    pub fires_at: String,
    /// Whether it fired.
    pub fired: bool,
}

/// `2026-12-01T18:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// EC2's scheduled event times: `21 Jan 2019 09:00:43 GMT`.
fn aws_time(time: SystemTime) -> String {
    let http = httpdate::fmt_http_date(time);
    http.split_once(", ")
        .map_or(http.clone(), |(_, rest)| rest.to_owned())
}

fn get<'v>(tree: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter()
        .try_fold(tree, |node, segment| node.get(*segment))
}

/// Sets `path` in `tree`, making objects on the way.
pub(crate) fn set(tree: &mut Value, path: &[&str], value: Value) {
    let mut node = tree;
    for segment in &path[..path.len() - 1] {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("made an object")
            .entry(segment.to_string())
            .or_insert_with(|| json!({}));
    }
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut()
        .expect("made an object")
        .insert(path[path.len() - 1].to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_their_arguments_and_times() {
        let spot: Scenario = "ec2-spot-interruption:stop@2s".parse().unwrap();
        assert_eq!(spot.kind, Kind::Ec2SpotInterruption("stop".into()));
        assert_eq!(spot.when, When::After(Duration::from_secs(2)));
        let default: Scenario = "ec2-spot-interruption".parse().unwrap();
        assert_eq!(default.kind, Kind::Ec2SpotInterruption("terminate".into()));
        assert_eq!(default.when, When::After(Duration::ZERO));
        let at: Scenario = "gcp-preemption@2026-12-01T18:00:00Z".parse().unwrap();
        assert_eq!(
            at.when,
            When::At(humantime::parse_rfc3339("2026-12-01T18:00:00Z").unwrap())
        );
        let azure: Scenario = "azure-scheduled-event:preempt@1m".parse().unwrap();
        assert_eq!(azure.kind, Kind::AzureScheduledEvent("Preempt".into()));
        for (bad, says) in [
            (
                "ec2-spot-interruption:explode",
                "not one of terminate, stop, hibernate",
            ),
            ("ec2-teleport", "unknown scenario"),
            ("ec2-rebalance:now", "takes no argument"),
            ("gcp-preemption@soon", "neither a delay"),
        ] {
            let error = bad.parse::<Scenario>().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn aws_times_have_no_weekday() {
        let time = humantime::parse_rfc3339("2019-01-21T09:00:43Z").unwrap();
        assert_eq!(aws_time(time), "21 Jan 2019 09:00:43 GMT");
    }

    #[test]
    fn set_makes_the_objects_on_its_way() {
        let mut tree = json!({"meta-data": {"instance-id": "i-1"}});
        set(
            &mut tree,
            &["meta-data", "spot", "termination-time"],
            json!("t"),
        );
        assert_eq!(tree["meta-data"]["spot"]["termination-time"], "t");
        assert_eq!(tree["meta-data"]["instance-id"], "i-1");
    }
}
