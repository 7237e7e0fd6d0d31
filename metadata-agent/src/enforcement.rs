//! The attached kernel hook as the agent drives it: verdicts from the policies written into
//! the hook's verdict map (enforce mode), and a clean detach at shutdown.

use std::sync::{Arc, Mutex};

use kernel_hook::{Hook, Verdict};
use selectors::{Action, PolicyStore};

use crate::resolver::Resolver;

/// The hook, shared by the event pipeline, the policy reloader and shutdown.
pub struct Enforcer {
    hook: Mutex<Option<Hook>>,
    enforce: bool,
}

/// The hook's verdict for a policy action: only `deny` refuses; `log` lets the call through.
pub fn verdict_of(action: Action) -> Verdict {
    match action {
        Action::Deny => Verdict::Deny,
        Action::Allow | Action::Log => Verdict::Allow,
    }
}

impl Enforcer {
    /// Takes over an attached hook; in enforce mode it starts consulting verdicts, with
    /// `default` for processes not resolved yet.
    pub fn new(
        mut hook: Hook,
        enforce: bool,
        default: Action,
    ) -> Result<Self, kernel_hook::HookError> {
        hook.set_mode(enforce, verdict_of(default))?;
        Ok(Self {
            hook: Mutex::new(Some(hook)),
            enforce,
        })
    }

    /// Whether verdicts are enforced.
    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    /// Records the verdict of process `tgid` (enforce mode only).
    pub fn apply(&self, tgid: u32, action: Action) {
        if !self.enforce {
            return;
        }
        let mut hook = self.hook.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hook) = hook.as_mut()
            && let Err(error) = hook.set_verdict(tgid, verdict_of(action))
        {
            let error = collectors::error_chain(&error);
            tracing::warn!(pid = tgid, "cannot record the verdict: {error}");
        }
    }

    /// Evaluates every cached process again (after a policy reload or the pre-resolution) and
    /// records its verdict.
    pub async fn apply_all(&self, resolver: &Resolver, policies: &PolicyStore) {
        if !self.enforce {
            return;
        }
        let set = policies.current();
        for pid in resolver.cached_pids() {
            if let Ok(resolution) = resolver.resolve(pid).await {
                let verdict = set.evaluate_with(&resolution.labels, &resolution.trust);
                self.apply(pid, verdict.verdict);
            }
        }
    }

    /// Detaches the programs now.
    pub fn detach(&self) {
        if let Some(hook) = self.hook.lock().unwrap_or_else(|e| e.into_inner()).take() {
            hook.detach();
            tracing::info!("kernel hook detached");
        }
    }
}

/// A shared enforcer, when the hook is attached.
pub type SharedEnforcer = Option<Arc<Enforcer>>;
