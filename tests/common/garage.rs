//! The real Garage cluster of the object-store tests is the bench's
//! (`cairn::bench::garage`), so the tests and `cairn bench --cold-tier`
//! start the same store the same way. Without the Garage binary these tests
//! fail with the message that says how to install it (they never skip).
#![allow(unused_imports)]

pub use cairn::bench::garage::{Garage, BUCKET};
