//! The test rig: real emulators on loopback (moto for Secrets Manager and CloudWatch Logs, our IMDSv2
//! emulator) and the real `node-agent` binary driving the stand-ins under `tests/standins/`.
#![allow(dead_code)] // each test binary uses a different part of the rig

mod agent;
mod asg;
mod cwproxy;
mod ethstats;
mod faultproxy;
mod haproxy;
mod host;
mod imds;
mod moto;
mod procfs;
mod rng;
mod standins;
pub use agent::*;
#[allow(unused_imports)] // only the fleet tests use the Auto Scaling responder
pub use asg::*;
#[allow(unused_imports)] // only the logs tests use the proxy
pub use cwproxy::*;
#[allow(unused_imports)] // only the ethstats tests run the real server
pub use ethstats::*;
#[allow(unused_imports)] // only the AWS fault tests use the fault proxy
pub use faultproxy::*;
#[allow(unused_imports)] // only the fleet tests run haproxy
pub use haproxy::*;
#[allow(unused_imports)] // the README tests use only repo()
pub use host::*;
pub use imds::*;
pub use moto::*;
pub use procfs::*;
#[allow(unused_imports)] // only the randomised fault tests use the PRNG
pub use rng::*;
#[allow(unused_imports)] // only the tests that wrap or fault the stand-ins
pub use standins::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
