//! This host's place in the fleet, from its instance tags (or the `--local` flags): role, environment,
//! and the EFS ids the tags may override. Pure.

use super::checks::{check_access_point_id, check_environment, check_fs_id};
use super::ConfigError;
use crate::host::{tag, Role};
use serde::Serialize;
use std::collections::BTreeMap;

/// This host's place in the fleet, from its tags (or local flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostTags {
    pub role: Role,
    pub environment: String,
    pub efs_file_system_id: Option<String>,
    pub efs_access_point_id: Option<String>,
}

impl HostTags {
    /// Validates the tags that matter; pure.
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Result<HostTags, ConfigError> {
        let accepted = Role::ALL.map(Role::as_str).join(", ");
        let role = match tags.get(tag::ROLE).map(|s| s.trim()) {
            None | Some("") => {
                return Err(ConfigError::Tag {
                    tag: tag::ROLE,
                    problem: format!("missing; tag the instance with Role = one of {accepted}"),
                })
            }
            Some(v) => Role::parse(v).ok_or_else(|| ConfigError::Tag {
                tag: tag::ROLE,
                problem: format!("unknown role {v:?}; accepted values: {accepted}"),
            })?,
        };
        let environment =
            match tags.get(tag::ENVIRONMENT).map(|s| s.trim()) {
                None | Some("") => return Err(ConfigError::Tag {
                    tag: tag::ENVIRONMENT,
                    problem:
                        "missing; tag the instance with Environment = e.g. production or staging"
                            .into(),
                }),
                Some(v) => check_environment(v).map_err(|problem| ConfigError::Tag {
                    tag: tag::ENVIRONMENT,
                    problem,
                })?,
            };
        let efs_file_system_id = match tags.get(tag::EFS_FILE_SYSTEM_ID).map(|s| s.trim()) {
            None | Some("") => None,
            Some(v) => Some(check_fs_id(v).map_err(|problem| ConfigError::Tag {
                tag: tag::EFS_FILE_SYSTEM_ID,
                problem,
            })?),
        };
        let efs_access_point_id = match tags.get(tag::EFS_ACCESS_POINT_ID).map(|s| s.trim()) {
            None | Some("") => None,
            Some(v) => Some(
                check_access_point_id(v).map_err(|problem| ConfigError::Tag {
                    tag: tag::EFS_ACCESS_POINT_ID,
                    problem,
                })?,
            ),
        };
        Ok(HostTags {
            role,
            environment,
            efs_file_system_id,
            efs_access_point_id,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Instance tags from pairs.
    pub(crate) fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn missing_role_lists_the_accepted_values() {
        let e = HostTags::from_tags(&tags(&[("Environment", "staging")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instance tag Role: missing; tag the instance with Role = one of sealer, rpc, bootnode, ethstats"
        );
        let e = HostTags::from_tags(&tags(&[("Role", "miner"), ("Environment", "staging")]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown role \"miner\"; accepted values: sealer, rpc"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_environment_names_the_tag() {
        let e = HostTags::from_tags(&tags(&[("Role", "rpc")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("instance tag Environment: missing"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_access_point_tag_names_the_tag_on_one_line() {
        let e = HostTags::from_tags(&tags(&[
            ("Role", "sealer"),
            ("Environment", "staging"),
            ("EfsAccessPointId", "fsap-123"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "instance tag EfsAccessPointId: \"fsap-123\" is not an EFS access point id"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    proptest::proptest! {
        #[test]
        fn any_tags_are_accepted_or_refused_with_the_tag_named(
            role in proptest::option::of("\\PC{0,12}"),
            env in proptest::option::of("\\PC{0,40}"),
            fs in proptest::option::of("\\PC{0,30}"),
            ap in proptest::option::of("(fsap-)?[0-9a-fA-F]{15,18}|\\PC{0,30}"),
        ) {
            let mut t = BTreeMap::new();
            for (k, v) in [("Role", role), ("Environment", env), ("EfsFileSystemId", fs), ("EfsAccessPointId", ap)] {
                if let Some(v) = v { t.insert(k.to_string(), v); }
            }
            match HostTags::from_tags(&t) {
                Ok(h) => proptest::prop_assert!(check_environment(&h.environment).is_ok()),
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("instance tag ")),
            }
        }
    }
}
