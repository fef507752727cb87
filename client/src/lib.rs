//! wspair-client
#![warn(missing_docs)]

pub mod event;
pub mod frame;
pub mod protocol;
