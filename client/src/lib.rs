//! wspair-client
#![warn(missing_docs)]

pub mod frame;
