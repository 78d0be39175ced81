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
            vec![
                text(&p["plugin"]),
                text(&cur["version"]),
                sha,
                text(&cur["index"]),
                text(&cur["fuel_per_apply"]),
                text(&cur["memory_limit"]),
                p["history"].as_array().map_or(0, Vec::len).to_string(),
                state,
            ]
        })
        .collect();
    crate::cli::table(
        &[
            "PLUGIN", "VERSION", "SHA256", "INDEX", "FUEL", "MEMORY", "VERSIONS", "STATE",
        ],
        &rows,
    )
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
