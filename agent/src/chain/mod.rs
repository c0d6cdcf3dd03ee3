//! The chain node-agent runs: its genesis (held as the bytes that were checked), geth (the version guard
//! and the first-boot `geth init`), and the versions the image pins.

pub mod genesis;
pub mod geth;
pub mod ipc;
pub mod pins;
