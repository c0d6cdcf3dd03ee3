//! The commands beside `run`: `get-secret`, `iam-policy`, `install` and `version`.

pub mod getsecret;
pub mod iampolicy;
pub mod install;
pub mod version;
