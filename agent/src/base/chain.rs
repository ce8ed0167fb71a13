//! An error on one line with its causes, `what: why: cause`, the way `{:#}` prints an `anyhow::Error`. A typed
//! error's message is only its own (its cause is its `source()`), so one printed on its own, outside an
//! `anyhow::Error`, is printed through [`text`].

/// `e`'s message, then the message of each of its causes, joined by `: `.
pub fn text(e: &dyn std::error::Error) -> String {
    join(e, false)
}

/// [`text`] without the causes whose message is already said (many libraries' errors repeat their cause's
/// message in their own, and `connection refused` is often three causes down).
pub fn unrepeated(e: &dyn std::error::Error) -> String {
    join(e, true)
}

fn join(e: &dyn std::error::Error, skip_said: bool) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !(skip_said && out.contains(&text)) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn prints_like_anyhow_or_without_repeats() {
        let e = || Repeats(std::io::Error::other("inner"));
        assert_eq!(super::text(&e()), "outer: inner: inner");
        assert_eq!(super::text(&e()), format!("{:#}", anyhow::Error::from(e())));
        assert_eq!(super::unrepeated(&e()), "outer: inner");
    }
}
