//! `regex.globs_match(a, b)`: whether two glob-like patterns have a common match,
//! decided the way OPA decides it.
//!
//! OPA's patterns know only `.` (any character), `[...]` (a set of characters and
//! `x-y` ranges; `^` is an ordinary character), the postfix flags `*` and `+`, and
//! `\` to take the next character literally; everything else is a literal character.
//! OPA's answer comes from a greedy token walk rather than an exact automaton
//! intersection, and it has corners of its own (a pattern that is exhausted while the
//! other still holds a `*` token does not match, so `.*` and the empty pattern do not
//! intersect). This module follows that walk, so that a policy gets OPA's answer,
//! corners included; the differential test in `tests/opa_differential.rs` checks it
//! against OPA on generated patterns.

use anyhow::bail;

/// A postfix flag on a token.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flag {
    None,
    Plus,
    Star,
}

/// What one token matches.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Class {
    Char(char),
    Any,
    /// Sorted, non-overlapping, non-adjacent inclusive ranges.
    Set(Vec<(char, char)>),
}

#[derive(Clone, Debug)]
struct Token {
    class: Class,
    flag: Flag,
}

/// Whether some single character satisfies both tokens (flags ignored). As in
/// OPA, `.` meets every set, even an empty one.
fn meets(a: &Class, b: &Class) -> bool {
    match (a, b) {
        (Class::Any, _) | (_, Class::Any) => true,
        (Class::Char(x), Class::Char(y)) => x == y,
        (Class::Char(c), Class::Set(s)) | (Class::Set(s), Class::Char(c)) => s
            .binary_search_by(|&(lo, hi)| {
                if hi < *c {
                    std::cmp::Ordering::Less
                } else if lo > *c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok(),
        (Class::Set(s), Class::Set(t)) => sets_meet(s, t),
    }
}

/// Whether two sorted range lists share a character, in one pass over both.
fn sets_meet(s: &[(char, char)], t: &[(char, char)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while let (Some(&(a, b)), Some(&(c, d))) = (s.get(i), t.get(j)) {
        if a <= d && c <= b {
            return true;
        }
        if b < d {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

fn normalise(mut ranges: Vec<(char, char)>) -> Vec<(char, char)> {
    ranges.sort_unstable();
    let mut out: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1).saturating_add(1) => {
                last.1 = last.1.max(hi);
            }
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// A pattern reader that reports errors as OPA does: the pattern, the position
/// (in characters) and the reason.
struct Lexer<'a> {
    pattern: &'a str,
    chars: Vec<char>,
    at: usize,
}

impl Lexer<'_> {
    /// OPA's error, with the pattern cut short: it may come from a request.
    fn fail<T>(&self, pos: usize, why: &str) -> anyhow::Result<T> {
        const SHOWN: usize = 64;
        let shown: String = self.pattern.chars().take(SHOWN).collect();
        let more = if self.chars.len() > SHOWN { "…" } else { "" };
        bail!("input:{shown}{more}, pos:{pos}, {why}: the input provided is invalid")
    }

    /// The next character and whether it was escaped; `None` at the end.
    fn next(&mut self) -> anyhow::Result<Option<(char, bool)>> {
        match self.chars.get(self.at) {
            None => Ok(None),
            Some('\\') => match self.chars.get(self.at + 1) {
                Some(&c) => {
                    self.at += 2;
                    Ok(Some((c, true)))
                }
                None => self.fail(self.at, "input ends with a \\ (escape) character"),
            },
            Some(&c) => {
                self.at += 1;
                Ok(Some((c, false)))
            }
        }
    }

    /// The body of a `[...]` set, after the `[`.
    fn set(&mut self) -> anyhow::Result<Class> {
        let mut ranges = Vec::new();
        let mut prev: Option<char> = None;
        let Some(mut item) = self.next()? else {
            return self.fail(self.at, "found [ without matching ]");
        };
        loop {
            match item {
                ('-', false) => {
                    let Some(lo) = prev else {
                        return self.fail(
                            self.at,
                            "range character '-' must be preceded by a Unicode character",
                        );
                    };
                    if self.at + 1 >= self.chars.len() {
                        return self.fail(
                            self.at,
                            "range character '-' must be followed by a Unicode character",
                        );
                    }
                    let Some((hi, escaped)) = self.next()? else {
                        return self.fail(self.at, "found [ without matching ]");
                    };
                    if !escaped && (hi == ']' || hi == '-') {
                        return self.fail(
                            self.at,
                            "range character '-' cannot be followed by a special symbol",
                        );
                    }
                    if hi < lo {
                        return self.fail(
                            self.at,
                            &format!(
                                "range is out of order: '{hi}' comes before '{lo}' in Unicode"
                            ),
                        );
                    }
                    ranges.push((lo, hi));
                    prev = None;
                }
                (']', false) => return Ok(Class::Set(normalise(ranges))),
                (c, _) => {
                    ranges.push((c, c));
                    prev = Some(c);
                }
            }
            match self.next()? {
                Some(next) => item = next,
                None => return self.fail(self.at, "found [ without matching ]"),
            }
        }
    }

    /// A `*` or `+` right after a token, if any (an escaped one is a literal).
    fn flag(&mut self) -> Flag {
        let flag = match self.chars.get(self.at) {
            Some('*') => Flag::Star,
            Some('+') => Flag::Plus,
            _ => return Flag::None,
        };
        self.at += 1;
        flag
    }
}

fn tokenize(pattern: &str) -> anyhow::Result<Vec<Token>> {
    let mut lx = Lexer {
        pattern,
        chars: pattern.chars().collect(),
        at: 0,
    };
    let mut tokens = Vec::new();
    while let Some((c, escaped)) = lx.next()? {
        let class = match (c, escaped) {
            (_, true) => Class::Char(c),
            ('.', false) => Class::Any,
            ('[', false) => lx.set()?,
            (']', false) => return lx.fail(lx.at, "set-close ']' with no preceding '['"),
            ('*' | '+', false) => {
                return lx.fail(lx.at, &format!("flag '{c}' must be preceded by a non-flag"))
            }
            _ => Class::Char(c),
        };
        let flag = lx.flag();
        tokens.push(Token { class, flag });
    }
    Ok(simplify(tokens))
}

/// Merges a flagged token into an equal flagged token before it (`a*a*` is `a*`,
/// `a*a+` and `a+a*` are `a+`; OPA also makes `a+a+` `a+`).
fn simplify(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if let Some(last) = out.last_mut() {
            if t.flag != Flag::None && last.flag != Flag::None && t.class == last.class {
                if t.flag == Flag::Plus {
                    last.flag = Flag::Plus;
                }
                continue;
            }
        }
        out.push(t);
    }
    out
}

fn plain(t: &Token) -> bool {
    t.flag == Flag::None
}

/// Drops the common unflagged prefix and suffix (keeping one token of each, as
/// OPA does); `None` when they differ.
fn trim<'a>(a: &'a [Token], b: &'a [Token]) -> Option<(&'a [Token], &'a [Token])> {
    let mut l = 0;
    while l < a.len() && l < b.len() && plain(&a[l]) && plain(&b[l]) {
        if !meets(&a[l].class, &b[l].class) {
            return None;
        }
        l += 1;
    }
    l = l.saturating_sub(1);
    // Indices one past the last kept token of each.
    let (mut ra, mut rb) = (a.len(), b.len());
    while ra > l && rb > l && plain(&a[ra - 1]) && plain(&b[rb - 1]) {
        if !meets(&a[ra - 1].class, &b[rb - 1].class) {
            return None;
        }
        ra -= 1;
        rb -= 1;
    }
    if ra < a.len() {
        ra += 1;
        rb += 1;
    }
    Some((&a[l.min(ra)..ra], &b[l.min(rb)..rb.min(b.len())]))
}

/// OPA's walk may branch at every `*`/`+` token; a pattern pair from a request
/// must not choose the CPU it costs. Beyond this many steps the call is an error
/// (an undefined call, so a deny), where OPA would keep walking.
const MAX_STEPS: u32 = 1_000_000;

/// The walk over two token lists, counting its steps (a token comparison costs
/// one step per range of the sets compared).
struct Walk {
    steps: u32,
}

/// The step budget ran out.
struct TooComplex;

impl Walk {
    fn step(&mut self) -> Result<(), TooComplex> {
        self.charge(1)
    }

    /// Whether two tokens meet, charged by the size of the sets compared.
    fn meets(&mut self, a: &Token, b: &Token) -> Result<bool, TooComplex> {
        let size = |c: &Class| match c {
            Class::Set(s) => s.len(),
            _ => 0,
        };
        self.charge(size(&a.class) + size(&b.class))?;
        Ok(meets(&a.class, &b.class))
    }

    fn charge(&mut self, cost: usize) -> Result<(), TooComplex> {
        self.steps = self
            .steps
            .saturating_add(u32::try_from(cost).unwrap_or(u32::MAX));
        if self.steps > MAX_STEPS {
            Err(TooComplex)
        } else {
            Ok(())
        }
    }

    fn normal(&mut self, a: &[Token], b: &[Token]) -> Result<bool, TooComplex> {
        let mut i = 0;
        while i < a.len() && i < b.len() {
            self.step()?;
            if plain(&a[i]) && plain(&b[i]) {
                if !self.meets(&a[i], &b[i])? {
                    return Ok(false);
                }
            } else {
                return self.special(&a[i..], &b[i..]);
            }
            i += 1;
        }
        Ok(i == a.len() && i == b.len())
    }

    fn special(&mut self, a: &[Token], b: &[Token]) -> Result<bool, TooComplex> {
        let (flagged, other) = if plain(&a[0]) { (b, a) } else { (a, b) };
        match flagged[0].flag {
            Flag::Plus => self.plus(flagged, other),
            Flag::Star => self.star(flagged, other),
            Flag::None => Ok(false),
        }
    }

    fn plus(&mut self, plussed: &[Token], other: &[Token]) -> Result<bool, TooComplex> {
        if !self.meets(&plussed[0], &other[0])? {
            return Ok(false);
        }
        Ok(self.star(plussed, &other[1..])?
            || (!plain(&other[0]) && self.normal(&plussed[1..], other)?))
    }

    fn star(&mut self, starred: &[Token], other: &[Token]) -> Result<bool, TooComplex> {
        let star = &starred[0];
        let next = starred.get(1);
        for (i, t) in other.iter().enumerate() {
            self.step()?;
            let meets_next = match next {
                Some(n) => self.meets(t, n)?,
                None => false,
            };
            if meets_next && self.normal(&starred[1..], &other[i..])? {
                return Ok(true);
            }
            if !self.meets(t, star)? {
                return Ok(false);
            }
        }
        Ok(next.is_none())
    }
}

/// `regex.globs_match(a, b)`.
pub fn globs_match(a: &str, b: &str) -> anyhow::Result<bool> {
    let a = tokenize(a)?;
    let b = tokenize(b)?;
    let Some((a, b)) = trim(&a, &b) else {
        return Ok(false);
    };
    match (Walk { steps: 0 }).normal(a, b) {
        Ok(matched) => Ok(matched),
        Err(TooComplex) => bail!("the patterns are too complex to intersect"),
    }
}

#[cfg(test)]
mod tests {
    use super::globs_match;

    #[test]
    fn answers_as_opa_does() {
        for (a, b, want) in [
            ("a*", "b*", false),
            ("a.*", "ab+", true),
            ("", "", true),
            (".*", "", false),
            ("[a-c]+", "[c-e]", true),
            ("[a-c]+", "[d-e]", false),
            ("a?", "a", false),
            ("[^a]", "^", true),
            ("\\.", "a", false),
            ("[]", "a", false),
            ("ab*c", "a.*", true),
            ("[ab]*", "[ac]*c", false),
        ] {
            assert_eq!(globs_match(a, b).unwrap(), want, "{a} / {b}");
        }
    }

    #[test]
    fn a_costly_pair_is_an_error_not_a_long_walk() {
        let a = format!("{}c+", "a*.*".repeat(15));
        let b = format!("{}b+", "a".repeat(60));
        assert!(globs_match(&a, &b).is_err());
    }

    #[test]
    fn invalid_patterns_are_errors() {
        for p in [
            "*a", "a**", "[a", "a]", "[a-]", "a\\", "+", "[z-a]", "[a-b-c]",
        ] {
            assert!(globs_match(p, "a").is_err(), "{p}");
        }
    }
}
