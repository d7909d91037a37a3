//! The pod's labels, as `data.portcullis.workload.labels`: read from the file the
//! Kubernetes downward API writes for `metadata.labels` (one `key="value"` line
//! per label, the value Go-quoted), which `portcullis inject` mounts. Policies
//! that select workloads by label (such as those `portcullis import istio`
//! writes) read them there.

use std::path::Path;

use serde_json::{Map, Value};

use super::options::PolicyError;

/// Where the labels go in the data document.
pub const DATA_PATH: [&str; 3] = ["portcullis", "workload", "labels"];

/// Parses the downward API's labels file; an error names the line.
pub fn parse(path: &Path, text: &str) -> Result<Value, PolicyError> {
    let mut labels = Map::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| PolicyError::Data {
            path: format!("{}:{}", path.display(), i + 1),
            message: format!("not a downward API label line (key=\"value\"): {why}"),
        };
        let (key, quoted) = line.split_once('=').ok_or_else(|| bad("no ="))?;
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        // Go's %q of a label value: label values are [A-Za-z0-9_.-], so JSON's
        // string syntax reads every value the API server accepts.
        let value: String = serde_json::from_str(quoted).map_err(|e| bad(&e.to_string()))?;
        labels.insert(key.to_owned(), Value::String(value));
    }
    Ok(Value::Object(labels))
}

/// Reads the labels file, if it exists (outside Kubernetes there is none: policies
/// that need labels then deny).
pub fn read(path: &Path) -> Result<Option<Value>, PolicyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_downward_api_format() {
        let v = parse(
            Path::new("labels"),
            "app=\"orders\"\napp.kubernetes.io/name=\"orders-api\"\nversion=\"\"\n",
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"app": "orders", "app.kubernetes.io/name": "orders-api", "version": ""})
        );
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        let e = parse(Path::new("labels"), "app=\"a\"\nbroken\n").unwrap_err();
        assert!(e.to_string().contains("labels:2"), "{e}");
        let e = parse(Path::new("labels"), "app=unquoted\n").unwrap_err();
        assert!(e.to_string().contains("labels:1"), "{e}");
    }

    #[test]
    fn a_missing_file_means_no_labels() {
        assert!(read(Path::new("/nonexistent/portcullis/labels"))
            .unwrap()
            .is_none());
    }
}
