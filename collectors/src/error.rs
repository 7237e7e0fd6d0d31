//! Errors shared by the collectors: why a collector could not be built, and how an error is
//! rendered with its causes for statuses and logs.

use std::error::Error;

/// Any error with its causes, as a collector hands it on.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// `error` followed by each of its causes, `: `-separated: the one-line text that statuses,
/// `/collectors` and logs show.
///
/// ```
/// use collectors::error::error_chain;
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let error = collectors::CollectError::failed("reading /etc/os-release").because(io);
/// assert_eq!(error_chain(&error), "reading /etc/os-release: no such file");
/// ```
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A collector that could not be built from its configuration section (an unreadable
/// `kubeletCA`, an invalid metadata service URL): the agent does not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the {section} collector")]
pub struct BuildError {
    /// The collector, and its section under `collectors:`.
    pub section: &'static str,
    /// What was wrong.
    #[source]
    pub source: BoxError,
}
