//! [`Timer`] implementations for real time.
//!
//! [`StdTimer`] works under any async runtime (its sleeps are served by one helper thread);
//! [`TokioTimer`] (feature `tcp`) uses tokio's timer wheel and must be used inside a tokio
//! runtime. Both count [`Time`] from the moment the timer was created.

use std::time::{Duration, Instant};

use llmkg_federation_core::{BoxFuture, Time, Timer};

fn elapsed_time(origin: Instant) -> Time {
    Time::from_micros(u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX))
}

fn remaining(origin: Instant, deadline: Time) -> Duration {
    deadline.saturating_since(elapsed_time(origin))
}

/// A runtime-agnostic timer on the operating system's monotonic clock.
///
/// ```
/// use llmkg_federation_core::Timer;
/// use llmkg_transport::StdTimer;
/// use std::time::Duration;
///
/// let timer = StdTimer::new();
/// let deadline = timer.now() + Duration::from_millis(5);
/// block_on(timer.sleep_until(deadline));
/// assert!(timer.now() >= deadline);
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// #     rt.block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct StdTimer {
    origin: Instant,
}

impl StdTimer {
    /// A timer whose [`Time::ZERO`] is now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for StdTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer for StdTimer {
    fn now(&self) -> Time {
        elapsed_time(self.origin)
    }

    fn sleep_until(&self, deadline: Time) -> BoxFuture<'static, ()> {
        if deadline == Time::MAX {
            return Box::pin(std::future::pending());
        }
        let wait = remaining(self.origin, deadline);
        Box::pin(futures_timer::Delay::new(wait))
    }
}

/// A timer on tokio's clock; sleeps must be awaited inside a tokio runtime with time enabled.
#[cfg(feature = "tcp")]
#[derive(Debug, Clone, Copy)]
pub struct TokioTimer {
    origin: tokio::time::Instant,
}

#[cfg(feature = "tcp")]
impl TokioTimer {
    /// A timer whose [`Time::ZERO`] is now.
    pub fn new() -> Self {
        Self { origin: tokio::time::Instant::now() }
    }
}

#[cfg(feature = "tcp")]
impl Default for TokioTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tcp")]
impl Timer for TokioTimer {
    fn now(&self) -> Time {
        elapsed_time(self.origin.into_std())
    }

    fn sleep_until(&self, deadline: Time) -> BoxFuture<'static, ()> {
        match self.origin.checked_add(Duration::from_micros(deadline.as_micros())) {
            Some(at) => Box::pin(tokio::time::sleep_until(at)),
            None => Box::pin(std::future::pending()),
        }
    }
}
