//! The `[metrics]` section: the CloudWatch namespace of the Embedded Metric Format events, and whether
//! they are written at all (the Prometheus endpoint, `GET /metrics` on `health.listen`, is always
//! served). The file's part, the typed settings and the check. Pure.

use super::checks::Invalid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsFile {
    /// Write an EMF event per child every `health.interval_secs` to the stream `{instance_id}/metrics`.
    pub emf: bool,
    /// The CloudWatch namespace of the metrics.
    pub namespace: String,
}

impl Default for MetricsFile {
    fn default() -> Self {
        MetricsFile {
            emf: true,
            namespace: "NodeAgent".into(),
        }
    }
}

/// `[metrics]`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    /// The namespace, when EMF events are written.
    pub emf_namespace: Option<String>,
}

/// A CloudWatch namespace: 1 to 255 of `0-9A-Za-z.-_/#:` and space, not all spaces, not `AWS/…`.
pub fn section(m: &MetricsFile) -> Result<MetricsSettings, Invalid> {
    let ns = &m.namespace;
    let ok = !ns.trim().is_empty()
        && ns.len() <= 255
        && !ns.starts_with("AWS/")
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#: ".contains(&b));
    if !ok {
        return Err(Invalid::new(
            "metrics.namespace",
            format!("{ns:?} is not a CloudWatch namespace (1-255 of letters, digits, . - _ / # : and space; not AWS/...)"),
        ));
    }
    Ok(MetricsSettings {
        emf_namespace: m.emf.then(|| ns.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_one_cloudwatch_accepts() {
        let with = |ns: &str| {
            section(&MetricsFile {
                namespace: ns.into(),
                ..MetricsFile::default()
            })
        };
        assert_eq!(
            with("NodeAgent").unwrap().emf_namespace.as_deref(),
            Some("NodeAgent")
        );
        assert!(with("Chain/Production #2").is_ok());
        for bad in ["", "   ", "AWS/EC2", "a\u{e9}", &"n".repeat(256)] {
            assert_eq!(with(bad).unwrap_err().key, "metrics.namespace", "{bad}");
        }
        let off = section(&MetricsFile {
            emf: false,
            ..MetricsFile::default()
        });
        assert_eq!(off.unwrap().emf_namespace, None);
    }
}
