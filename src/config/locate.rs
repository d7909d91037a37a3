//! Configuration errors, and the locator that resolves them to
//! `file:line:column: field.path: message`: for syntax and type errors from the
//! parser's position and path, for semantic errors by finding the field path in
//! the YAML text.

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read configuration: {source}")]
    Io {
        /// The file name as given.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is not a valid configuration.
    /// Displayed as `FILE:LINE:COLUMN: FIELD.PATH: message`; line and column are
    /// left out when unknown, the path when the error concerns the whole document.
    #[error("{}", render_invalid(.file, *.line, *.column, .path, .message))]
    Invalid {
        /// The file name as given.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// Field path such as `outbound.routes[0].spiffe_id`; empty for the root.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn render_invalid(
    file: &str,
    line: Option<usize>,
    column: Option<usize>,
    path: &str,
    message: &str,
) -> String {
    let mut s = file.to_owned();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    s.push_str(": ");
    if !path.is_empty() {
        s.push_str(path);
        s.push_str(": ");
    }
    s.push_str(message);
    s
}

pub(super) fn parse_error(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    text: &str,
    file: &str,
) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." || path == "?" {
        String::new()
    } else {
        path
    };
    let inner = e.into_inner();
    let (line, column) = match inner.location() {
        Some(loc) => (Some(loc.line()), Some(loc.column())),
        None => (None, None),
    };
    let mut message = inner.to_string();
    // Errors raised after a scalar was read (durations, SPIFFE IDs) carry the
    // mark of an enclosing node; a field found further on is more precise.
    let at_key = message.contains("unknown field") || message.contains("duplicate field");
    let (line, column) = match (line, locate(text, &path)) {
        (Some(l), Some((fl, fc))) if fl > l => (Some(fl), Some(fc)),
        (Some(l), Some((fl, fc))) if fl == l && !at_key && Some(fc) > column => {
            (Some(fl), Some(fc))
        }
        (None, Some((fl, fc))) => (Some(fl), Some(fc)),
        _ => (line, column),
    };
    // serde_yaml appends " at line L column C" and prefixes its own path.
    if let Some(loc) = inner.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(m) = message.strip_suffix(&suffix) {
            message = m.to_owned();
        }
    }
    if let Some((prefix, rest)) = message.split_once(": ") {
        let prefix_is_path = !prefix.is_empty()
            && !prefix.contains(' ')
            && (path == prefix
                || path.starts_with(&format!("{prefix}."))
                || path.starts_with(&format!("{prefix}[")));
        if prefix_is_path {
            message = rest.to_owned();
        }
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        column,
        path,
        message: rewrite_serde_message(&message),
    }
}

/// serde quotes names with backticks and says "expected `a` or `b`" for two
/// choices; rewrite to `expected one of "a", "b"` with double quotes.
fn rewrite_serde_message(msg: &str) -> String {
    let mut msg = msg.to_owned();
    if let Some(i) = msg.find(", expected `") {
        let tail = &msg[i + ", expected ".len()..];
        if let Some((a, b)) = tail.split_once("` or `") {
            if !a.contains(',') && b.ends_with('`') && !b.contains(',') {
                msg = format!("{}, expected one of {a}`, `{b}", &msg[..i]);
            }
        }
    }
    msg.replace('`', "\"")
}

/// Best-effort location of a field path such as `outbound.routes[1].listen` in
/// the YAML text, for errors found after parsing. Works for block style and for
/// simple flow style; returns the 1-based line and column of the last key's
/// value, or of the key itself when its value is not on the same line.
pub(super) fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    #[derive(Debug)]
    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            segs.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }

    // Lines with comments removed.
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let mut cut = l.len();
            let b = l.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                if c == b'#' && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') {
                    cut = i;
                    break;
                }
            }
            &l[..cut]
        })
        .collect();
    let indent = |l: &str| l.len() - l.trim_start().len();

    // Find `key:` at a key boundary in `line` starting at byte `from`.
    let find_key = |line: &str, key: &str, from: usize| -> Option<usize> {
        let mut start = from;
        while let Some(off) = line.get(start..)?.find(key) {
            let i = start + off;
            let before_ok = i == 0
                || matches!(
                    line.as_bytes()[i - 1],
                    b' ' | b'\t' | b'{' | b',' | b'-' | b'"' | b'\''
                );
            let after = line[i + key.len()..].trim_start_matches(['"', '\'']);
            if before_ok && after.trim_start().starts_with(':') {
                return Some(i);
            }
            start = i + key.len();
        }
        None
    };

    // Current position: line index, column (byte) and indentation of its line.
    let mut pos: Option<(usize, usize)> = None;
    let mut skip = 0usize;
    for seg in &segs {
        match seg {
            Seg::Index(i) => skip = *i,
            Seg::Key(key) => {
                let (start_line, start_col, parent_indent) = match pos {
                    None => (0, 0, None),
                    Some((l, c)) => (l, c + 1, Some(indent(lines[l]))),
                };
                let mut found = None;
                let mut remaining = skip;
                'scan: for (li, line) in lines.iter().enumerate().skip(start_line) {
                    if li > start_line && !line.trim().is_empty() {
                        if let Some(pi) = parent_indent {
                            if indent(line) <= pi && !line.trim_start().starts_with('-') {
                                break 'scan;
                            }
                        }
                    }
                    let mut from = if li == start_line { start_col } else { 0 };
                    while let Some(col) = find_key(line, key, from) {
                        if pos.is_none() && indent(line) != 0 {
                            break;
                        }
                        if remaining == 0 {
                            found = Some((li, col));
                            break 'scan;
                        }
                        remaining -= 1;
                        from = col + key.len();
                    }
                }
                skip = 0;
                pos = Some(found?);
            }
        }
    }
    let (l, c) = pos?;
    // Point at the value when it is on the same line as the key.
    let line = lines[l];
    let after_key = line[c..].find(':').map(|i| c + i + 1)?;
    let value = line[after_key..].trim_start();
    let col = if value.is_empty() {
        c
    } else {
        line.len() - line[after_key..].trim_start().len()
    };
    Some((l + 1, col + 1))
}
