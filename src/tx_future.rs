//! The future a transaction closure returns: boxed, `Send`, and allowed to
//! borrow both the transaction (for `'t`) and the caller's surroundings
//! (for `'a`, which outlives `'t`).
//!
//! An `AsyncFnMut(&Transaction<'_>)` bound cannot say that the future it
//! returns is `Send` for every lifetime of the argument, so a closure that
//! borrows anything made the helper's future not `Send` ("implementation
//! of `Send` is not general enough") and unusable in `tokio::spawn` or an
//! axum handler. Naming the future's type (a boxed `dyn Future + Send`)
//! lets the bound say it. diesel-async solves the same problem with the
//! scoped-futures crate; these few lines do the same without it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future a transaction closure returns: build it with
/// [`TxFutureExt::scoped`] (`async move { .. }.scoped()`).
///
/// It may borrow the transaction or session it was given (for `'t`) and
/// anything the closure borrowed from its caller (for `'a`); it is `Send`,
/// so the helper's own future is `Send` too.
#[must_use = "futures do nothing unless awaited"]
pub struct TxFuture<'a, 't, T> {
    inner: Pin<Box<dyn Future<Output = T> + Send + 't>>,
    // `&'t &'a ()` is well-formed only when 'a: 't: the bound a
    // higher-ranked `for<'t>` closure signature needs to borrow both.
    _borrows: PhantomData<&'t &'a ()>,
}

impl<'a, 't, T> TxFuture<'a, 't, T> {
    /// Boxes `future`; the same as `future.scoped()`.
    pub fn new(future: impl Future<Output = T> + Send + 't) -> Self {
        TxFuture {
            inner: Box::pin(future),
            _borrows: PhantomData,
        }
    }
}

impl<T> Future for TxFuture<'_, '_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> std::fmt::Debug for TxFuture<'_, '_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TxFuture")
    }
}

/// `.scoped()` on any `Send` future: the form a transaction closure
/// returns.
///
/// ```
/// use dbmanager::{TxFuture, TxFutureExt};
///
/// fn closure_body<'a, 't>(name: &'a str) -> TxFuture<'a, 't, usize> {
///     async move { name.len() }.scoped()
/// }
/// # let _ = closure_body("x");
/// ```
pub trait TxFutureExt: Future + Send + Sized {
    /// Boxes the future into a [`TxFuture`].
    fn scoped<'a, 't>(self) -> TxFuture<'a, 't, Self::Output>
    where
        Self: 't,
    {
        TxFuture::new(self)
    }
}

impl<F: Future + Send> TxFutureExt for F {}
