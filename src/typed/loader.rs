//! [`Loader`]: what `get_or_set` accepts as a loader under options of each mode, and the
//! boxed form a load takes when it goes on in the background.

use super::options::{InBackground, InCaller, Loaded};
use futures_util::future::MapOk;
use futures_util::TryFutureExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A validator of stored values, typed to the handle's `T`.
pub(super) type Validator<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A load that goes on in the background.
#[doc(hidden)]
pub type Detached<T, E> = Pin<Box<dyn Future<Output = Result<Loaded<T>, E>> + Send>>;

/// A loader `get_or_set` accepts under options of mode `M` ([`InCaller`] or
/// [`InBackground`]): a future of `Result<T, E>` or `Result<Loaded<T>, E>`. Under
/// [`InCaller`] options it may borrow and need not be `Send`; under [`InBackground`] options
/// it must be `Send + 'static`, as it may finish after its caller answered.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a loader of `Result<{T}, {E}>` for these options",
    label = "a loader of this value",
    note = "a loader is a future of `Result<T, E>` or `Result<Loaded<T>, E>`; options with \
            stale_while_revalidate, eager_refresh or soft_timeout also need it `Send + 'static` \
            (move owned clones into an `async move` block)"
)]
pub trait Loader<M, T, E> {
    /// The loader, answering a [`Loaded`].
    #[doc(hidden)]
    type Running: Future<Output = Result<Loaded<T>, E>>;
    /// Starts nothing yet: wraps the loader so it answers a [`Loaded`].
    #[doc(hidden)]
    fn start(self) -> Self::Running;
    /// The loader as a future that may be spawned, when the options' mode allows it.
    #[doc(hidden)]
    fn detach(running: Pin<Box<Self::Running>>) -> Option<Detached<T, E>>;
}

impl<F, V, T, E> Loader<InCaller, T, E> for F
where
    F: Future<Output = Result<V, E>>,
    V: Into<Loaded<T>>,
{
    type Running = MapOk<F, fn(V) -> Loaded<T>>;

    fn start(self) -> Self::Running {
        self.map_ok(Into::into as fn(V) -> Loaded<T>)
    }

    fn detach(_: Pin<Box<Self::Running>>) -> Option<Detached<T, E>> {
        None
    }
}

impl<F, V, T, E> Loader<InBackground, T, E> for F
where
    F: Future<Output = Result<V, E>> + Send + 'static,
    V: Into<Loaded<T>> + Send + 'static,
    T: 'static,
    E: 'static,
{
    type Running = MapOk<F, fn(V) -> Loaded<T>>;

    fn start(self) -> Self::Running {
        self.map_ok(Into::into as fn(V) -> Loaded<T>)
    }

    fn detach(running: Pin<Box<Self::Running>>) -> Option<Detached<T, E>> {
        Some(running)
    }
}
