//! How extension builtins are added to a regorus engine, with OPA's error mode.

use regorus::{Engine, Value};

/// Adds extensions to an engine; with `strict` off an error makes the call
/// undefined (OPA's default for builtin errors).
pub struct Registrar<'a> {
    engine: &'a mut Engine,
    strict: bool,
}

impl<'a> Registrar<'a> {
    /// A registrar adding to `engine`; with `strict` off a builtin error makes
    /// the call undefined.
    pub fn new(engine: &'a mut Engine, strict: bool) -> Self {
        Registrar { engine, strict }
    }

    /// Registers `f` as the builtin `name` taking `nargs` arguments.
    pub fn add<F>(&mut self, name: &str, nargs: u8, f: F) -> anyhow::Result<()>
    where
        F: Fn(&[Value]) -> anyhow::Result<Value> + Clone + Send + Sync + 'static,
    {
        let strict = self.strict;
        self.engine.add_extension(
            name.to_owned(),
            nargs,
            Box::new(move |args: Vec<Value>| match f(&args) {
                Err(_) if !strict => Ok(Value::Undefined),
                other => other,
            }),
        )
    }
}
