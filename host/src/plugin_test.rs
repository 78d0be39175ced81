//! `keel test PLUGIN.wasm [CASES.json]`: runs a plugin's own test against an in-process host
//! (the node's runtime, an in-memory KV store), so a project made by `keel new` tests itself
//! in any language with one command, no cluster needed (docs/plugins.md, "Testing").
//!
//! The cases file lists steps, each a command or a query with what it must answer:
//!
//! ```json
//! {"steps": [
//!   {"command": {"op": "add", "name": "visits", "by": 5}, "expect": {"value": 5}},
//!   {"query": {"op": "get", "name": "visits"}, "expect": {"value": 5}},
//!   {"command": {"op": "nope"}, "expect_error": "unknown op"}
//! ]}
//! ```
//!
//! The whole sequence runs twice on fresh state: every answer and the final state must be
//! the same both times, which catches an `apply` that reads a clock or randomness it was
//! not given.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use keel_plugin::{ApplyContext, KvView, Limits, MemoryKv, PluginId, Runtime, RuntimeConfig};
use serde::Deserialize;
use serde_json::Value;

/// The cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// In order.
    pub steps: Vec<Step>,
}

/// One command or query and what it must come to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A command to apply (JSON, sent as its compact text).
    pub command: Option<Value>,
    /// A query to answer.
    pub query: Option<Value>,
    /// The answer, compared as JSON.
    pub expect: Option<Value>,
    /// The call must fail with an error containing this text.
    pub expect_error: Option<String>,
}

/// What a run found: one line per step, and whether every step passed.
pub struct Report {
    /// `ok …` or `FAILED …` per step, then the determinism check.
    pub lines: Vec<String>,
    /// Every step and the determinism check passed.
    pub passed: bool,
}

/// Runs `cases` against the component `wasm`.
pub fn run(wasm: &[u8], cases: &Cases) -> anyhow::Result<Report> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = runtime
        .load(PluginId::new("test", "local"), wasm, Limits::default())
        .map_err(|e| anyhow::anyhow!("the component does not load: {e}"))?;
    let mut lines = Vec::new();
    let mut passed = true;
    let mut runs = Vec::new();
    for round in 0..2 {
        let state = Arc::new(MemoryKv::new());
        let mut answers = Vec::new();
        for (i, step) in cases.steps.iter().enumerate() {
            let got = call(&plugin, &state, i as u64 + 1, step)?;
            if round == 0 {
                let (ok, line) = judge(i + 1, step, &got);
                passed &= ok;
                lines.push(line);
            }
            answers.push(got);
        }
        let everything = state
            .range(b"", None, usize::MAX)
            .map_err(|e| anyhow::anyhow!("reading the state: {e}"))?;
        runs.push((answers, everything));
    }
    if runs[0] == runs[1] {
        lines.push("ok   deterministic: a second run gave the same answers and state".into());
    } else {
        passed = false;
        lines.push(
            "FAILED deterministic: a second run on fresh state answered or wrote otherwise \
             (a clock, randomness or a global kept between calls?)"
                .into(),
        );
    }
    Ok(Report { lines, passed })
}

/// Reads the component and the cases, runs them.
pub fn run_files(wasm: &Path, cases: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(wasm).with_context(|| format!("{}", wasm.display()))?;
    let text = std::fs::read(cases).with_context(|| format!("{}", cases.display()))?;
    let cases: Cases = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a cases file", cases.display()))?;
    run(&bytes, &cases)
}

type Answer = Result<Vec<u8>, String>;

fn call(
    plugin: &keel_plugin::Plugin,
    state: &Arc<MemoryKv>,
    index: u64,
    step: &Step,
) -> anyhow::Result<Answer> {
    let text = |v: &Value| v.to_string().into_bytes();
    let view: Arc<dyn KvView> = state.clone();
    match (&step.command, &step.query) {
        (Some(cmd), None) => {
            let ctx = ApplyContext {
                index,
                term: 1,
                timestamp_ms: 1_700_000_000_000 + index,
                client_id: None,
                attachments: Vec::new(),
            };
            let out = plugin
                .apply(view, &ctx, &text(cmd))
                .map_err(|e| anyhow::anyhow!("step {index}: the host failed: {e}"))?;
            if out.result.is_ok() {
                state.commit(&out.writes);
            }
            Ok(out.result.map_err(|e| e.to_string()))
        }
        (None, Some(q)) => Ok(plugin.query(view, &text(q)).map_err(|e| e.to_string())),
        _ => anyhow::bail!("step {index}: give exactly one of \"command\" and \"query\""),
    }
}

fn judge(n: usize, step: &Step, got: &Answer) -> (bool, String) {
    let what = step
        .command
        .as_ref()
        .or(step.query.as_ref())
        .map_or(String::new(), Value::to_string);
    let shown = match got {
        Ok(b) => String::from_utf8_lossy(b).into_owned(),
        Err(e) => format!("error: {e}"),
    };
    let ok = match (&step.expect, &step.expect_error, got) {
        (Some(want), None, Ok(b)) => serde_json::from_slice::<Value>(b).is_ok_and(|v| &v == want),
        (None, Some(want), Err(e)) => e.contains(want.as_str()),
        (None, None, Ok(_)) => true,
        _ => false,
    };
    let line = if ok {
        format!("ok   {n}: {what} -> {shown}")
    } else {
        let want = match (&step.expect, &step.expect_error) {
            (Some(v), _) => v.to_string(),
            (_, Some(e)) => format!("an error containing {e:?}"),
            _ => "success".into(),
        };
        format!("FAILED {n}: {what}\n       got  {shown}\n       want {want}")
    };
    (ok, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(json: &str) -> Cases {
        serde_json::from_str(json).expect("cases")
    }

    #[test]
    fn the_kv_plugin_passes_right_expectations_and_fails_wrong_ones() {
        let good = cases(
            r#"{"steps": [
                {"command": {"op":"put","key":"a","value":"1"}, "expect": {"prev": null}},
                {"query": {"op":"get","key":"a"}, "expect": {"value": "1"}},
                {"command": {"op":"nope"}, "expect_error": "unknown variant `nope`"}
            ]}"#,
        );
        let r = run(crate::state::BUILTIN_KV, &good).expect("runs");
        assert!(r.passed, "{}", r.lines.join("\n"));
        assert_eq!(r.lines.len(), 4);
        let bad = cases(
            r#"{"steps": [
                {"command": {"op":"put","key":"a","value":"1"}, "expect": {"prev": "x"}},
                {"command": {"op":"put","key":"a","value":"1"}, "expect_error": "nope"}
            ]}"#,
        );
        let r = run(crate::state::BUILTIN_KV, &bad).expect("runs");
        assert!(!r.passed);
        assert_eq!(
            r.lines.iter().filter(|l| l.starts_with("FAILED")).count(),
            2
        );
    }
}
