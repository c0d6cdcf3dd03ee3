//! The one-line error: every cause of an error, joined, as the user reads it.

/// One line with every cause, as the SDK nests them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct E {
        msg: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    #[test]
    fn error_chain_joins_every_cause_once_on_one_line() {
        let root = E {
            msg: "connection refused",
            source: None,
        };
        let mid = E {
            msg: "dispatch failure",
            source: Some(Box::new(root)),
        };
        let top = E {
            msg: "failed to load token: dispatch failure",
            source: Some(Box::new(mid)),
        };
        assert_eq!(
            super::error_chain(&top),
            "failed to load token: dispatch failure: connection refused"
        );
    }
}
