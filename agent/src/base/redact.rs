//! Credentials never leave the process: a URL is shown with its user, password and query string replaced by `***`
//! wherever Switchback prints or stores it (status, state, history, logs, errors). The configuration refuses URLs
//! that carry credentials in the first place; this is the second line, for text that comes from elsewhere (an
//! error message of the HTTP client, a `publish --to`).

/// `url` with any `user:password@` and `?query` replaced by `***`.
pub fn url(url: &str) -> String {
    text(url)
}

/// `s` with the credentials of every URL in it replaced by `***`.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The URL runs to the next space, quote or bracket.
        let end = tail.find(|c: char| c.is_whitespace() || "\"'<>()[]{}`,".contains(c)).unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        match path.find('?') {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?***");
            }
            None => out.push_str(path),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_replaced() {
        assert_eq!(url("https://user:secret@host:9000/a/b"), "https://***@host:9000/a/b");
        assert_eq!(url("https://host/a?sig=abc&x=1"), "https://host/a?***");
        assert_eq!(url("s3://bucket/deploy/web"), "s3://bucket/deploy/web");
        assert_eq!(
            text("GET https://u:p@h/x failed; see `az://c/p?sv=1`."),
            "GET https://***@h/x failed; see `az://c/p?***`."
        );
        assert_eq!(text("no url here"), "no url here");
    }
}
