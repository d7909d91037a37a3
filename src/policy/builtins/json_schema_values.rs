//! Values as Go writes and reads them, for the JSON Schema builtins: exact
//! decimals printed as Go's `big.Float` (gojsonschema's bounds in messages), JSON
//! as Go's `encoding/json` writes it after a round trip through `float64`
//! (gojsonschema's `const`, `enum` and unique items), and Go (RE2) regular
//! expressions read by the `regex` crate. Also the schema error type all the
//! JSON Schema modules share.

use regex::Regex;
use regorus::Value;

/// gojsonschema's formats whose Go checks portcullis does not reproduce (times, e-mail addresses, URIs, URI templates, regular expressions).
pub(super) const UNSUPPORTED_FORMATS: &[&str] = &[
    "time",
    "date-time",
    "email",
    "idn-email",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "regex",
];

/// A schema that gojsonschema refuses (its message, which OPA reports), or one
/// that portcullis cannot check exactly as OPA does.
#[derive(Debug)]
pub(super) enum SchemaError {
    Invalid(String),
    Unsupported(String),
}

pub(super) type Parsed<T> = Result<T, SchemaError>;

pub(super) fn invalid<T>(message: impl Into<String>) -> Parsed<T> {
    Err(SchemaError::Invalid(message.into()))
}

pub(super) fn unsupported<T>(message: impl Into<String>) -> Parsed<T> {
    Err(SchemaError::Unsupported(message.into()))
}

/// gojsonschema's "Invalid type" parse error (its arguments in its order).
pub(super) fn invalid_type<T>(expected: &str, given: &str) -> Parsed<T> {
    invalid(format!(
        "Invalid type. Expected: {expected}, given: {given}"
    ))
}

/// A Go (RE2) regular expression as the `regex` crate reads it: Perl classes
/// (`\d`, `\w`, `\s`, `\b`) are ASCII in Go, Unicode in `regex`.
pub(super) fn go_regex(pattern: &str) -> Parsed<Regex> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    return invalid("trailing backslash");
                };
                let class = match next {
                    'd' => Some("0-9"),
                    'w' => Some("0-9A-Za-z_"),
                    's' => Some("\\t\\n\\x0C\\r "),
                    _ => None,
                };
                match (in_class, next, class) {
                    (true, _, Some(set)) => out.push_str(set),
                    (true, 'D' | 'W' | 'S', _) => {
                        return unsupported(format!(
                            "the regular expression {pattern:?} (\\{next} in a class) is not supported by portcullis"
                        ))
                    }
                    (false, 'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'b' | 'B', _) => {
                        out.push_str("(?-u:\\");
                        out.push(next);
                        out.push(')');
                    }
                    _ => {
                        out.push('\\');
                        out.push(next);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A `]` first in a class (after an optional `^`) is literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push_str("\\]");
                    chars.next();
                }
            }
            '[' if in_class => {
                // `[:alpha:]` and the like; a lone `[` is literal in Go.
                if chars.peek() == Some(&':') {
                    out.push('[');
                } else {
                    out.push_str("\\[");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    Regex::new(&out).or_else(|e| invalid(e.to_string()))
}

/// A decimal number, exactly: `digits` × 10^`exp`, `digits` without leading or
/// trailing zeros (empty for zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Dec {
    pub neg: bool,
    pub digits: String,
    pub exp: i64,
}

impl Dec {
    /// Reads `1`, `-2.50`, `1.5e-7`, `3E+2`.
    pub fn parse(text: &str) -> Option<Dec> {
        let (mantissa, e) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i64>().ok()?),
            None => (text, 0),
        };
        let (neg, mantissa) = match mantissa.strip_prefix('-') {
            Some(m) => (true, m),
            None => (false, mantissa),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if !(int.chars().chain(frac.chars())).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let mut exp = e - i64::try_from(frac.len()).ok()?;
        let trimmed_end = all.trim_end_matches('0');
        exp += i64::try_from(all.len() - trimmed_end.len()).ok()?;
        let digits = trimmed_end.trim_start_matches('0').to_string();
        if digits.is_empty() {
            return Some(Dec {
                neg: false,
                digits,
                exp: 0,
            });
        }
        Some(Dec { neg, digits, exp })
    }

    /// The exact value of a regorus number (`None` for other values).
    pub fn from_number(v: &Value) -> Parsed<Dec> {
        let Value::Number(n) = v else {
            return unsupported("not a number");
        };
        let text = if n.is_integer() {
            match (n.as_i128(), n.as_big()) {
                (Some(i), _) => i.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => format!("{:e}", n.as_f64().unwrap_or(f64::NAN)),
            }
        } else {
            format!("{:e}", n.as_f64().unwrap_or(f64::NAN))
        };
        match Dec::parse(&text) {
            Some(d) => Ok(d),
            None => unsupported(format!("the number {text} is not supported by portcullis")),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    pub fn is_integer(&self) -> bool {
        self.exp >= 0
    }

    /// The position of the leading digit (for comparing magnitudes).
    fn lead(&self) -> i64 {
        self.exp + self.digits.len() as i64
    }

    fn cmp_magnitude(&self, other: &Dec) -> std::cmp::Ordering {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => return std::cmp::Ordering::Equal,
            (true, false) => return std::cmp::Ordering::Less,
            (false, true) => return std::cmp::Ordering::Greater,
            _ => {}
        }
        self.lead().cmp(&other.lead()).then_with(|| {
            let width = self.digits.len().max(other.digits.len());
            format!("{:0<width$}", self.digits).cmp(&format!("{:0<width$}", other.digits))
        })
    }

    pub fn cmp(&self, other: &Dec) -> std::cmp::Ordering {
        let neg_a = self.neg && !self.is_zero();
        let neg_b = other.neg && !other.is_zero();
        match (neg_a, neg_b) {
            (false, true) => std::cmp::Ordering::Greater,
            (true, false) => std::cmp::Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }

    /// Whether `self / divisor` is an integer (exact, as Go's `big.Rat`).
    pub fn is_multiple_of(&self, divisor: &Dec) -> Parsed<bool> {
        if self.is_zero() {
            return Ok(true);
        }
        let too_long = || {
            SchemaError::Unsupported(
                "multipleOf with numbers of more than 37 digits is not supported by portcullis"
                    .into(),
            )
        };
        let a: u128 = self.digits.parse().map_err(|_| too_long())?;
        let b: u128 = divisor.digits.parse().map_err(|_| too_long())?;
        if b > u128::MAX / 10 {
            return Err(too_long());
        }
        if self.exp >= divisor.exp {
            let shift = self.exp - divisor.exp;
            if shift > 4096 {
                return Err(too_long());
            }
            let mut r = a % b;
            for _ in 0..shift {
                r = (r * 10) % b;
            }
            Ok(r == 0)
        } else {
            let mut d = b;
            for _ in 0..(divisor.exp - self.exp) {
                match d.checked_mul(10) {
                    Some(x) => d = x,
                    // The divisor outgrew every u128, so it exceeds `a`.
                    None => return Ok(false),
                }
            }
            Ok(a % d == 0)
        }
    }

    /// As Go's `big.Float` prints with `%v` (shortest, `%e` from exponent 6 on
    /// or below -4), which is how gojsonschema writes bounds into messages.
    pub fn go_big_float(&self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        let sign = if self.neg { "-" } else { "" };
        let x = self.lead() - 1;
        if !(-4..6).contains(&x) {
            return format!("{sign}{}", self.e_form(2));
        }
        format!("{sign}{}", self.plain())
    }

    /// `d.ddde±XX` with at least `width` exponent digits.
    fn e_form(&self, width: usize) -> String {
        let x = self.lead() - 1;
        let (first, rest) = self.digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if x < 0 { '-' } else { '+' };
        format!("{first}{dot}{rest}e{esign}{:0width$}", x.abs())
    }

    /// Without an exponent.
    fn plain(&self) -> String {
        let n = self.digits.len() as i64;
        if self.exp >= 0 {
            format!("{}{}", self.digits, "0".repeat(self.exp as usize))
        } else if n + self.exp > 0 {
            let (i, f) = self.digits.split_at((n + self.exp) as usize);
            format!("{i}.{f}")
        } else {
            format!(
                "0.{}{}",
                "0".repeat((-(n + self.exp)) as usize),
                self.digits
            )
        }
    }
}

/// `v` as Go's `encoding/json` writes it after a round trip through Go values
/// (gojsonschema compares `const`, `enum` and unique items so): numbers as
/// `float64`, object keys sorted, `<`, `>`, `&` escaped.
pub(super) fn go_json(v: &Value) -> Parsed<String> {
    let mut out = String::new();
    write_go_json(v, &mut out)?;
    Ok(out)
}

fn write_go_json(v: &Value, out: &mut String) -> Parsed<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let Some(d) = Dec::parse(&format!("{f:e}")) else {
                return unsupported("a number that is not finite");
            };
            let a = f.abs();
            if a != 0.0 && !(1e-6..1e21).contains(&a) {
                let sign = if d.neg { "-" } else { "" };
                out.push_str(sign);
                out.push_str(&d.e_form(if d.lead() - 1 < 0 { 1 } else { 2 }));
            } else {
                if d.neg {
                    out.push('-');
                }
                out.push_str(&d.plain());
            }
        }
        Value::String(s) => go_quote(s, out),
        Value::Array(_) | Value::Set(_) => {
            let items = super::go_json::elements(v);
            out.push('[');
            for (i, x) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(x, out)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                let Value::String(k) = k else {
                    return unsupported("an object key that is not a string");
                };
                if i > 0 {
                    out.push(',');
                }
                go_quote(k, out);
                out.push(':');
                write_go_json(x, out)?;
            }
            out.push('}');
        }
        Value::Undefined => return unsupported("an undefined value"),
    }
    Ok(())
}

fn go_quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_go_does() {
        let d = |s: &str| Dec::parse(s).unwrap();
        assert_eq!(d("12345678901").go_big_float(), "1.2345678901e+10");
        assert_eq!(d("0.000001").go_big_float(), "1e-06");
        assert_eq!(d("0.0001").go_big_float(), "0.0001");
        assert_eq!(d("1.25").go_big_float(), "1.25");
        assert_eq!(d("100").go_big_float(), "100");
        assert_eq!(d("-3e2").go_big_float(), "-300");
        assert_eq!(go_json(&Value::from(1e21)).unwrap(), "1e+21");
        assert_eq!(go_json(&Value::from(1e-7)).unwrap(), "1e-7");
        assert_eq!(go_json(&Value::from(2.5)).unwrap(), "2.5");
        assert_eq!(
            go_json(&Value::from("<&>")).unwrap(),
            r#""\u003c\u0026\u003e""#
        );
        assert!(d("3.5").is_multiple_of(&d("0.1")).unwrap());
        assert!(!d("1").is_multiple_of(&d("0.3")).unwrap());
        assert!(d("0.9").is_multiple_of(&d("0.3")).unwrap());
        assert_eq!(d("2").cmp(&d("10")), std::cmp::Ordering::Less);
        assert_eq!(d("-2").cmp(&d("-10")), std::cmp::Ordering::Greater);
        assert_eq!(d("1.50").cmp(&d("1.5")), std::cmp::Ordering::Equal);
    }

    #[test]
    fn go_regex_classes_are_ascii() {
        let re = go_regex(r"^\d+$").unwrap();
        assert!(re.is_match("123"));
        assert!(!re.is_match("١٢٣"));
        assert!(go_regex(r"[\d.]+").unwrap().is_match("1.2"));
        assert!(go_regex("(").is_err());
    }
}
