//! The decision memo: decisions remembered per query, keyed on the input values
//! the policy can read (see [`crate::policy::access`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use regorus::Value;

use crate::policy::decision::Decision;

/// A bounded map from input keys to results: when full it starts over, so a burst
/// of distinct requests costs one clear, not a growing table. Entries are found by
/// a hash of the key and confirmed by comparing the whole key, so a collision can
/// only cost an evaluation, never return another input's decision.
pub(super) struct Memo {
    max: usize,
    map: Mutex<HashMap<u64, (Vec<Value>, Decision)>>,
}

impl Memo {
    pub(super) fn new(max: usize) -> Self {
        Memo {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn get(&self, hash: u64, key: &[Value]) -> Option<Decision> {
        match self.map().get(&hash) {
            Some((k, v)) if k.as_slice() == key => Some(v.clone()),
            _ => None,
        }
    }

    pub(super) fn map(&self) -> MutexGuard<'_, HashMap<u64, (Vec<Value>, Decision)>> {
        // Nothing panics while the lock is held; recover the map if it ever did.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn put(&self, hash: u64, key: Vec<Value>, value: Decision) {
        let mut map = self.map();
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(hash, (key, value));
    }
}

/// A hash of a memo key (FNV-1a over a walk of the values): stable within the
/// process, cheap for the short strings keys are made of.
pub(super) fn key_hash(key: &[Value]) -> u64 {
    fn bytes(h: &mut u64, b: &[u8]) {
        for &x in b {
            *h ^= u64::from(x);
            *h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn walk(h: &mut u64, v: &Value) {
        match v {
            Value::Null => bytes(h, b"n"),
            Value::Undefined => bytes(h, b"u"),
            Value::Bool(b) => bytes(h, if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                bytes(h, b"#");
                // Equal numbers need not hash equal (a miss, not a wrong answer).
                bytes(h, &n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
            }
            Value::String(s) => {
                bytes(h, b"s");
                bytes(h, s.as_bytes());
                bytes(h, &[0xff]);
            }
            Value::Array(a) => {
                bytes(h, b"[");
                for x in a.iter() {
                    walk(h, x);
                }
                bytes(h, b"]");
            }
            Value::Set(set) => {
                bytes(h, b"{");
                for x in set.iter() {
                    walk(h, x);
                }
                bytes(h, b"}");
            }
            Value::Object(o) => {
                bytes(h, b"(");
                for (k, x) in o.iter_sorted() {
                    walk(h, k);
                    walk(h, x);
                }
                bytes(h, b")");
            }
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in key {
        walk(&mut h, v);
    }
    h
}

/// Whether a decision came from the memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoUse {
    /// Not memoised: the policy may read what the key cannot capture (the whole
    /// input, the clock, …), the cache is off, or the query has no VM/interpreter.
    Off,
    Hit,
    Miss,
}

impl MemoUse {
    /// The `result` label of `portcullis_policy_decision_cache_total`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            MemoUse::Off => None,
            MemoUse::Hit => Some("hit"),
            MemoUse::Miss => Some("miss"),
        }
    }
}
