//! What status reports, as types: the server fills them, the verdict judges them.

use tokio::time::Instant;

/// What one geth probe saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GethSample {
    pub head: u64,
    /// Seconds since the head block's timestamp.
    pub head_age_secs: u64,
    pub peers: u64,
    pub syncing: bool,
    /// The highest block the peers announced (`eth_syncing`'s `highestBlock`), while syncing.
    pub highest: Option<u64>,
    /// For a sealer: whether its address is in `clique_getSigners`.
    pub authorised: Option<bool>,
    /// For a sealer: whether geth is sealing (`eth_mining`).
    pub mining: Option<bool>,
}

/// Where a child is in its life, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Ready,
    Unhealthy,
    BackingOff,
    CrashLoop,
    Stopping,
    Stopped,
    /// Not running, and not to be started: the sealer's lease is not held (the reason says why).
    Fenced,
}

/// A child's state, published on every change and on every health round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChildStatus {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    /// Unix time of the current process's start.
    pub started_at: Option<u64>,
    /// Restarts after exits (crashes) and after failed health checks, since the agent started.
    pub restarts: u32,
    pub unhealthy_restarts: u32,
    pub last_exit: Option<String>,
    /// Why the child is unhealthy, backing off or crash-looping.
    pub reason: Option<String>,
    /// The last chain sample of a geth child.
    pub chain: Option<GethSample>,
    /// Whether it has served at least once since the agent started.
    pub ever_ready: bool,
    /// When the supervising task last made progress (the watchdog's evidence).
    #[serde(skip)]
    pub heartbeat: Instant,
}

impl ChildStatus {
    pub fn new_for(name: &str) -> Self {
        ChildStatus {
            name: name.to_owned(),
            state: State::Starting,
            pid: None,
            started_at: None,
            restarts: 0,
            unhealthy_restarts: 0,
            last_exit: None,
            reason: None,
            chain: None,
            ever_ready: false,
            heartbeat: Instant::now(),
        }
    }
}
