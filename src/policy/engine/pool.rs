//! The compiled plan of each query and the evaluators that run it: pools of
//! warmed regorus VMs (one per RVM query) and of interpreter engines (cloned from
//! the prepared prototype). A pool lock is held only to pop or push, never while
//! evaluating; a VM or engine that failed is dropped, not reused.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use regorus::rvm::program::Program;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::memo::Memo;
use crate::policy::access::{InputAccess, InputNeeds};
use crate::policy::decision::DecisionError;
use crate::policy::options::EvalLimits;
use crate::policy::rego_error::one_line;

/// Idle VMs/engines kept per pool; more concurrent evaluations simply build extra ones.
const POOL_CAP: usize = 64;
/// Work units between wall-clock checks.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(63);

/// Which evaluator serves a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvaluatorKind {
    /// regorus bytecode VM.
    Rvm,
    /// regorus tree-walking interpreter.
    Interpreter,
    /// No module defines the query: always undefined (deny).
    Undefined,
}

/// A query compiled to an RVM program, with its pool of warmed VMs.
pub(super) struct RvmPlan {
    pub(super) program: Arc<Program>,
    pub(super) pool: Mutex<Vec<RegoVM>>,
}

/// How a query is evaluated.
pub(super) enum Plan {
    Rvm(RvmPlan),
    Interpreter,
    Undefined,
}

impl Plan {
    pub(super) fn kind(&self) -> EvaluatorKind {
        match self {
            Plan::Rvm(_) => EvaluatorKind::Rvm,
            Plan::Interpreter => EvaluatorKind::Interpreter,
            Plan::Undefined => EvaluatorKind::Undefined,
        }
    }
}

/// One configured query, compiled.
pub(super) struct QueryPlan {
    pub(super) query: String,
    pub(super) plan: Plan,
    /// What the rules this query can reach read of the input.
    pub(super) access: InputAccess,
    pub(super) needs: InputNeeds,
    /// Results by the values at the input paths the policy reads.
    pub(super) memo: Option<Memo>,
    /// The query names a partial object or set (see
    /// [`crate::policy::parity::is_partial_document`]).
    pub(super) partial: bool,
}

/// What every evaluation of one revision shares: the data document, the limits
/// and the prepared interpreter engine with its pool of clones.
pub(super) struct Evaluators {
    pub(super) limits: EvalLimits,
    pub(super) data: Value,
    /// Prepared interpreter engine; pooled clones evaluate fallback queries.
    pub(super) prototype: Engine,
    engines: Mutex<Vec<Engine>>,
}

impl Evaluators {
    pub(super) fn new(limits: EvalLimits, data: Value, prototype: Engine) -> Self {
        Evaluators {
            limits,
            data,
            prototype,
            engines: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn run_vm(&self, rvm: &RvmPlan, input: Value) -> Result<Value, DecisionError> {
        let pooled = lock(&rvm.pool).pop();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => new_vm(&rvm.program, &self.data, &self.limits)
                .map_err(|e| DecisionError::Eval(format!("{e}")))?,
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            vm.set_input(input);
            let r = vm.execute();
            // Drop the reference to the input now rather than at the next request.
            vm.set_input(Value::Null);
            r
        }));
        match outcome {
            Ok(Ok(v)) => {
                let mut pool = lock(&rvm.pool);
                if pool.len() < POOL_CAP {
                    pool.push(vm);
                }
                Ok(v)
            }
            // A failed VM is dropped, not reused.
            Ok(Err(e)) => Err(vm_error(&e)),
            Err(_) => Err(DecisionError::Eval("the policy VM panicked".to_string())),
        }
    }

    pub(super) fn interpret(&self, q: &QueryPlan, input: Value) -> Result<Value, DecisionError> {
        let pooled = lock(&self.engines).pop();
        let mut engine = pooled.unwrap_or_else(|| self.prototype.clone());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine.set_input(input);
            let r = eval_document(&mut engine, &q.query, q.partial);
            engine.set_input(Value::Null);
            r
        }));
        match outcome {
            Ok(Ok(v)) => {
                let mut pool = lock(&self.engines);
                if pool.len() < POOL_CAP {
                    pool.push(engine);
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(interpreter_error(&e)),
            Err(_) => Err(DecisionError::Eval(
                "the policy interpreter panicked".to_string(),
            )),
        }
    }
}

/// Evaluates the document `query` names. `eval_rule` is the fast path but
/// regorus 0.14 answers undefined for a document assembled from partial rules;
/// a query evaluates those as OPA does.
pub(super) fn eval_document(
    engine: &mut Engine,
    query: &str,
    partial: bool,
) -> anyhow::Result<Value> {
    if !partial {
        return engine.eval_rule(query.to_string());
    }
    let results = engine.eval_query(query.to_string(), false)?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map_or(Value::Undefined, |e| e.value))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while a pool lock is held; recover the data if it ever did.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn timer(limits: &EvalLimits) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: limits.timeout,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

pub(super) fn new_vm(
    program: &Arc<Program>,
    data: &Value,
    limits: &EvalLimits,
) -> Result<RegoVM, VmError> {
    let mut vm = RegoVM::new();
    vm.load_program(program.clone());
    vm.set_data(data.clone())?;
    vm.set_max_instructions(limits.max_instructions);
    vm.set_execution_timer_config(Some(timer(limits)));
    Ok(vm)
}

fn vm_error(e: &VmError) -> DecisionError {
    match e {
        VmError::InstructionLimitExceeded { .. } | VmError::TimeLimitExceeded { .. } => {
            DecisionError::Timeout
        }
        other => DecisionError::Eval(one_line(&format!("{other}"))),
    }
}

fn interpreter_error(e: &anyhow::Error) -> DecisionError {
    if let Some(regorus::LimitError::TimeLimitExceeded { .. }) =
        e.downcast_ref::<regorus::LimitError>()
    {
        return DecisionError::Timeout;
    }
    let text = format!("{e}");
    if text.contains("exceeded time limit") {
        return DecisionError::Timeout;
    }
    DecisionError::Eval(one_line(&text))
}
