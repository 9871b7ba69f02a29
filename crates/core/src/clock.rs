//! Time as the decision logic sees it: milliseconds on a monotonic clock, passed
//! in by the caller so that engines stay pure and simulations control time.

/// Milliseconds since an arbitrary, per-process origin on a monotonic clock.
pub type Millis = u64;

/// The one source of "now" for executors. Engines never call it; they are handed
/// the value.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}
