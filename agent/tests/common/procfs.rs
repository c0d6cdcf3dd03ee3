//! Reading processes from /proc: stat fields, children, argv, liveness, status fields.

use std::path::Path;

/// A process's /proc/PID/stat fields after the command name (which may hold spaces and parentheses):
/// `[0]` is the state, `[1]` the parent pid, `[11]` and `[12]` utime and stime (fields 3, 4, 14 and 15 of
/// proc(5)).
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(pid))
        .collect()
}

/// A process's argv.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && stat_fields(pid).is_none_or(|f| f.first().map(String::as_str) != Some("Z"))
}

/// A process's /proc status field, e.g. `Uid:` → ["64123", ...].
pub fn proc_status(pid: i32, field: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}
