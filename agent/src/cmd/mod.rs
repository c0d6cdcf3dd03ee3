//! The commands beside `run`: `backup`, `restore`, `get-secret`, `iam-policy`, `install` and `version`.

pub mod backup;
pub mod getsecret;
pub mod iampolicy;
pub mod install;
pub mod version;
