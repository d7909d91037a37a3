//! Reading regorus' error messages. regorus reports a parse or compile error as
//! several lines with a source excerpt (`"\n--> file:line:col\n  |\n3 | text\n
//! | ^\nerror: message"`); logs and refusals want the location and the message.

/// The `file:line:col` of a regorus error (the `--> ` line), if it names one.
pub fn location(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
}

/// The message of a regorus error (the last `error: ` line), or the whole text trimmed.
pub fn message(text: &str) -> &str {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| text.trim())
}

/// Flattens regorus' multi-line error (with source excerpt) to
/// `file:line:col: message` for logs.
pub fn one_line(text: &str) -> String {
    match location(text) {
        Some(loc) => format!("{loc}: {}", message(text)),
        None => message(text).to_string(),
    }
}
