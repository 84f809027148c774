//! Webhooks: the gateway's `Events` stream delivered to each configured
//! target in its gateway's payload format.

mod dispatcher;
mod formats;
mod sender;
mod tls;

pub(crate) use dispatcher::run;
pub(crate) use formats::{c_us, sender_number, wwebjs_body, wwebjs_type};
pub(crate) use sender::{RetryPolicy, Sender};
pub(crate) use tls::client_config;
