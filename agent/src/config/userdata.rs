//! The instance's user-data as a configuration layer, so an image needs no cloud-init to be configured:
//! user-data whose first line is `#node-agent` is TOML with the configuration file's strict schema,
//! merged over the file key by key (user-data wins; tables merge, other values are replaced whole). Any
//! other user-data (a cloud-init script) is not for node-agent. And where each setting that is not a
//! default comes from: the file, user-data, or a tag. Pure: the text comes in as a value.

use super::file::ConfigFile;
use super::ConfigError;
use std::collections::BTreeMap;
use std::path::Path;

/// The first line that makes user-data node-agent's.
pub const MARKER: &str = "#node-agent";
/// EC2 accepts at most this much user-data.
pub const MAX_BYTES: usize = 16 * 1024;

/// What the instance's user-data is to node-agent.
#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    /// There is none (404).
    Absent,
    /// Something else (a cloud-init script, gzip, MIME): not node-agent's, left alone.
    Other,
    /// node-agent configuration: the TOML after the marker line, checked against the schema.
    Config(toml::Table),
}

/// Reads user-data as IMDS served it.
pub fn read(raw: Option<&[u8]>) -> Result<UserData, ConfigError> {
    let Some(raw) = raw else {
        return Ok(UserData::Absent);
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Ok(UserData::Other);
    };
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    if first.trim_end() != MARKER {
        return Ok(UserData::Other);
    }
    if raw.len() > MAX_BYTES {
        return Err(ConfigError::UserData {
            line: 1,
            message: format!(
                "{} bytes, over EC2's limit of {MAX_BYTES}: keep the fleet-wide settings in /etc/node-agent/config.toml (baked into the image) and only what differs in user-data",
                raw.len()
            ),
        });
    }
    // The line numbers of errors count the marker line, as the text in the launch template does.
    let at = |e: toml::de::Error| {
        let line = e
            .span()
            .map_or(0, |s| rest[..s.start.min(rest.len())].matches('\n').count())
            + 2;
        ConfigError::UserData {
            line,
            message: e.message().trim().replace('\n', " "),
        }
    };
    let table: toml::Table = toml::from_str(rest).map_err(at)?;
    // The same strict schema as the file: an unknown key or a wrong type is an error here.
    toml::from_str::<ConfigFile>(rest).map_err(at)?;
    Ok(UserData::Config(table))
}

/// `over` merged into `base`: tables key by key, every other value replaced.
pub fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The file's settings with user-data's over them, checked again as one configuration.
pub fn layered(file: &ConfigFile, over: &toml::Table) -> Result<ConfigFile, ConfigError> {
    let mut table = toml::Table::try_from(file).map_err(|e| ConfigError::UserData {
        line: 0,
        message: format!("cannot merge with the file: {e}"),
    })?;
    merge(&mut table, over);
    table
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::UserData {
            line: 0,
            message: e.message().trim().replace('\n', " "),
        })
}

/// The dotted names of every value in `t` (`logs.retention_days`, `storage.rpc.kind`).
pub fn keys(t: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in t {
        match v {
            toml::Value::Table(inner) => {
                out.extend(keys(inner).into_iter().map(|sub| format!("{k}.{sub}")))
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

fn value_at<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Where each setting that is not its default comes from, for `check`: the last layer that sets it
/// (a tag over user-data over the file). `file_keys`: the keys the file's own text sets.
pub fn sources(
    merged: &ConfigFile,
    file: &Path,
    file_keys: &[String],
    user_data: Option<&toml::Table>,
    tags: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let have = toml::Table::try_from(merged).unwrap_or_default();
    let default = toml::Table::try_from(ConfigFile::default()).unwrap_or_default();
    let differs = |k: &str| value_at(&have, k) != value_at(&default, k);
    let mut out = BTreeMap::new();
    for k in file_keys.iter().filter(|k| differs(k)) {
        out.insert(k.clone(), file.display().to_string());
    }
    for k in user_data.map(keys).unwrap_or_default() {
        if differs(&k) {
            out.insert(k, "user-data".into());
        }
    }
    for (key, tag) in tags {
        out.insert(key.to_string(), format!("tag {tag}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<UserData, ConfigError> {
        read(Some(text.as_bytes()))
    }

    #[test]
    fn only_user_data_that_says_so_is_configuration() {
        assert_eq!(read(None).unwrap(), UserData::Absent);
        assert_eq!(config("#!/bin/sh\necho hi\n").unwrap(), UserData::Other);
        assert_eq!(read(Some(&[0x1f, 0x8b, 0xff])).unwrap(), UserData::Other);
        assert_eq!(config("# node-agent\n").unwrap(), UserData::Other);
        let UserData::Config(t) = config("#node-agent  \n[logs]\nretention_days = 90\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(keys(&t), ["logs.retention_days"]);
        assert_eq!(
            config("#node-agent").unwrap(),
            UserData::Config(toml::Table::new())
        );
    }

    #[test]
    fn errors_name_user_data_and_the_line() {
        let e = config("#node-agent\n[logs]\nretention_dayz = 90\n").unwrap_err();
        assert_eq!(
            e.to_string().split(" (").next().unwrap(),
            "user-data line 3: unknown field `retention_dayz`, expected one of `dir`, `group_template`, `stream_template`, `retention_days`, `create_group`, `max_file_bytes`, `keep_files`, `compress`, `ship`, `flush_ms`, `stop_flush_secs`"
        );
        let e = config("#node-agent\n\n[health]\ninterval_secs = \"ten\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("user-data line 4: invalid type"),
            "{e}"
        );
        let e = config("#node-agent\n[logs\n").unwrap_err();
        assert!(e.to_string().starts_with("user-data line 2: "), "{e}");
        assert!(!e.to_string().contains('\n'));
        let big = format!("{MARKER}\n# {}\n", "x".repeat(MAX_BYTES));
        let e = config(&big).unwrap_err();
        assert!(e.to_string().contains("over EC2's limit of 16384"), "{e}");
    }

    #[test]
    fn user_data_wins_key_by_key_and_each_setting_names_its_source() {
        let file = ConfigFile::parse(
            "[logs]\nretention_days = 60\nkeep_files = 9\n[storage]\nefs_utils = true\n",
            Path::new("/etc/node-agent/config.toml"),
        )
        .unwrap();
        let UserData::Config(over) =
            config("#node-agent\n[logs]\nretention_days = 90\n[storage.rpc]\nkind = \"efs\"\n")
                .unwrap()
        else {
            panic!()
        };
        let merged = layered(&file, &over).unwrap();
        assert_eq!(merged.logs.retention_days, 90);
        assert_eq!(merged.logs.keep_files, 9, "the file's other keys stay");
        assert!(merged.storage.efs_utils);
        let file_keys: Vec<String> = [
            "logs.retention_days",
            "logs.keep_files",
            "storage.efs_utils",
        ]
        .map(String::from)
        .into();
        let s = sources(
            &merged,
            Path::new("/etc/node-agent/config.toml"),
            &file_keys,
            Some(&over),
            &[("storage.efs_file_system_id", "EfsFileSystemId")],
        );
        assert_eq!(s["logs.retention_days"], "user-data");
        assert_eq!(s["logs.keep_files"], "/etc/node-agent/config.toml");
        assert_eq!(s["storage.rpc.kind"], "user-data");
        assert_eq!(s["storage.efs_file_system_id"], "tag EfsFileSystemId");
        assert_eq!(s.len(), 5, "{s:?}");
    }
}
