//! How `keel plugins` prints `GET /v1/plugins` for people.

use serde_json::Value;

/// One line per plugin: its active version (or that it is undeployed), the index that
/// version became active at, its limits, and how many versions the history holds.
pub fn render_plugins(list: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = list["plugins"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|p| {
            let cur = &p["current"];
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            let sha = cur["sha256"]
                .as_str()
                .map_or("-".into(), |s| s.chars().take(12).collect::<String>());
            let state = match p["undeployed_at"].as_u64() {
                Some(i) if p["active"] != Value::Bool(true) => format!("undeployed at {i}"),
                _ => "active".into(),
            };
            let last_error = match p["last_error"]["index"].as_u64() {
                Some(i) => format!("at {i}: {}", text(&p["last_error"]["message"])),
                None => "-".into(),
            };
            vec![
                text(&p["plugin"]),
                text(&cur["version"]),
                sha,
                text(&cur["index"]),
                text(&cur["fuel_per_apply"]),
                text(&cur["memory_limit"]),
                p["history"].as_array().map_or(0, Vec::len).to_string(),
                text(&p["commands"]["applied"]),
                text(&p["commands"]["failed"]),
                state,
                last_error.chars().take(60).collect(),
            ]
        })
        .collect();
    crate::cli::table(
        &[
            "PLUGIN",
            "VERSION",
            "SHA256",
            "INDEX",
            "FUEL",
            "MEMORY",
            "VERSIONS",
            "APPLIED",
            "FAILED",
            "STATE",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// A dry run's report for people: the counts, a verdict, and the first differences with
/// the current version's outcome beside the candidate's.
pub fn render_dry_run(r: &Value) -> String {
    use std::fmt::Write as _;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let span = match (r["from_index"].as_u64(), r["to_index"].as_u64()) {
        (Some(a), Some(b)) => format!(" (log indices {a}..={b})"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "replayed {} of {}'s commands{span}; this node holds {} to replay",
        n("replayed"),
        r["plugin"].as_str().unwrap_or("?"),
        n("available"),
    );
    let _ = writeln!(
        out,
        "answers differ: {}   KV writes differ: {}   commands with a difference: {}",
        n("answers_differ"),
        n("writes_differ"),
        n("commands_differ"),
    );
    if n("replayed") == 0 {
        let _ = writeln!(
            out,
            "nothing to compare: no command of this plugin was applied here since the node started"
        );
    } else if n("commands_differ") == 0 {
        let _ = writeln!(out, "no difference: safe to roll");
    }
    let side = |s: &Value| -> Vec<String> {
        let mut lines = vec![format!("version {}", s["version"].as_str().unwrap_or("?"))];
        match (&s["answer"], &s["error"]) {
            (Value::String(a), _) => lines.push(format!("answer {a}")),
            (_, Value::String(e)) => lines.push(format!("error  {e}")),
            _ => {}
        }
        if let Some(w) = s["writes"].as_object() {
            for (k, v) in w {
                lines.push(match v.as_str() {
                    Some(v) => format!("set {k} = {v}"),
                    None => format!("delete {k}"),
                });
            }
        }
        if let Some(w) = s["retains"].as_object() {
            for (sha, n) in w {
                lines.push(format!("retain {} {n:+}", &sha[..sha.len().min(12)]));
            }
        }
        lines
    };
    for d in r["differences"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\nindex {} #{}: {}",
            d["index"],
            d["position"],
            d["command"].as_str().unwrap_or("")
        );
        let (a, b) = (side(&d["current"]), side(&d["candidate"]));
        let width = a
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(20, 60);
        let _ = writeln!(out, "  {:<width$} | CANDIDATE", "CURRENT");
        for i in 0..a.len().max(b.len()) {
            let left: String = a
                .get(i)
                .map_or("", String::as_str)
                .chars()
                .take(width)
                .collect();
            let right = b.get(i).map_or("", String::as_str);
            let _ = writeln!(out, "  {left:<width$} | {right}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_list_prints_one_row_each_with_undeployed_ones_marked() {
        let list = serde_json::json!({"plugins": [
            {"plugin": "kv", "active": true, "undeployed_at": null, "history": [{}, {}],
             "current": {"version": "v2", "sha256": "0123456789abcdef", "index": 7,
                         "fuel_per_apply": 100, "memory_limit": 200}},
            {"plugin": "old", "active": false, "undeployed_at": 9, "history": [{}]},
        ]});
        let out = render_plugins(&list);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[1].starts_with("kv") && lines[1].contains("0123456789ab "),
            "{out}"
        );
        assert!(lines[2].contains("undeployed at 9"), "{out}");
    }
}
