//! The JSON error object a failing command prints on stdout when `--json` was given
//! (its code is the exit code the engine assigns the error).

use serde::Serialize;
use shadowcopy_engine::error::{exit_code, failed_copy};

/// What a failing command prints on stdout with `--json` (the human error still goes to
/// stderr): `{"error": {"code": 4, "message": "...", "causes": [...], "copy_id": 7}}`.
#[derive(Debug, Serialize)]
pub struct JsonError {
    error: JsonErrorBody,
}

#[derive(Debug, Serialize)]
struct JsonErrorBody {
    /// The process exit code (see README).
    code: i32,
    /// The error itself, as the first line on stderr.
    message: String,
    /// Its sources, outermost first (the `because:` lines on stderr).
    causes: Vec<String>,
    /// The copy that failed verification (exit 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_id: Option<i64>,
}

impl JsonError {
    /// The object for an error a subcommand returned.
    pub fn from_error(err: &anyhow::Error) -> JsonError {
        let mut chain = err.chain().map(ToString::to_string);
        let message = chain.next().unwrap_or_default();
        let copy_id = failed_copy(err);
        JsonError {
            error: JsonErrorBody {
                code: exit_code(err),
                message,
                causes: chain.collect(),
                copy_id,
            },
        }
    }

    /// The object for a command line that could not be parsed (clap's error, rendered
    /// as text): its first paragraph on one line, without the `error: ` prefix.
    pub fn from_usage(code: i32, rendered: &str) -> JsonError {
        let text = rendered.trim_start();
        let text = text.strip_prefix("error:").unwrap_or(text);
        let first = text.split("\n\n").next().unwrap_or_default();
        JsonError {
            error: JsonErrorBody {
                code,
                message: first
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
                causes: Vec::new(),
                copy_id: None,
            },
        }
    }
}
