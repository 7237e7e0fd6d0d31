//! Policy and selector engine (filled by the selectors issue).
