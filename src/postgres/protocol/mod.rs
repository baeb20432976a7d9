//! The PostgreSQL wire protocol, as far as the pool must know it to hand
//! out a connection that carries nothing of its previous user: framing
//! ([`framer`]), one session's exact state ([`session`]) and the rule that
//! acts on it ([`policy`]). Everything here is pure (no I/O, no clock):
//! `postgres::wire_tap` feeds it the bytes, `postgres::reuse` carries out
//! what the policy says.

mod framer;
mod policy;
mod session;
#[cfg(test)]
mod tests;

pub(crate) use framer::Framer;
pub(crate) use policy::{Action, decide};
pub(crate) use session::{ServerError, Session, TransactionStatus, View};
