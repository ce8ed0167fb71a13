//! An error on one line with its causes, `what: why: cause`, the way `{:#}` prints an `anyhow::Error`. A typed
//! error's message is only its own (its cause is its `source()`), so one printed on its own, outside an
//! `anyhow::Error`, is printed through [`text`].

/// `e`'s message, then the message of each of its causes, joined by `: `.
pub fn text(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_like_anyhow() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::text(&e), "outer: inner");
        assert_eq!(super::text(&e), format!("{:#}", anyhow::Error::from(Outer(std::io::Error::other("inner")))));
    }
}
