//! How a run is shown: a table for people (colour only on a terminal, never
//! with `NO_COLOR`), one summary line, or a JSON document for graders and CI.
//! Also the list of checks for `--list`. Nothing here touches the network.

use super::catalogue::{Check, Level};
use super::wire::{Failure, describe, hex};
use std::fmt::Write as _;

/// What happened to one check.
pub enum Verdict {
    Pass,
    Fail(Failure),
    Note(String),
    Skip(String),
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Note(_) => "note",
            Verdict::Skip(_) => "skip",
        }
    }
}

pub struct Outcome {
    pub check: &'static Check,
    pub verdict: Verdict,
    /// The server no longer answered a probe after this check ran.
    pub stopped_after: bool,
}

impl Outcome {
    pub fn skipped(check: &'static Check, reason: String) -> Outcome {
        Outcome {
            check,
            verdict: Verdict::Skip(reason),
            stopped_after: false,
        }
    }
}

/// Under a check that a `--spawn` server did not survive.
const STOPPED_AFTER: &str = "the server stopped answering after this check";
/// How a skip says the checks before it ended with the server gone.
const STOPPED_SKIP: &str = "server stopped answering after ";

/// A line after the summary, if the run calls for one: without `--spawn`,
/// which checks were not run because the server stopped, and how to have
/// them run; with it, how many checks the server did not survive.
pub fn closing_note(outcomes: &[Outcome]) -> Option<String> {
    let not_run = outcomes
        .iter()
        .filter(|o| matches!(&o.verdict, Verdict::Skip(why) if why.starts_with(STOPPED_SKIP)))
        .count();
    if not_run > 0 {
        let after = outcomes.iter().find(|o| o.stopped_after)?.check.id;
        return Some(format!(
            "{not_run} {} not run: the server stopped answering after {after}; \
             --spawn 'COMMAND {{port}}' starts a fresh server for each check",
            if not_run == 1 {
                "check was"
            } else {
                "checks were"
            }
        ));
    }
    let stopped = outcomes.iter().filter(|o| o.stopped_after).count();
    (stopped > 0).then(|| {
        format!(
            "the server stopped answering after {stopped} of {} checks (each ran on a server \
             of its own)",
            outcomes.len()
        )
    })
}

/// Counts per verdict.
#[derive(Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub notes: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut s = Summary::default();
        for o in outcomes {
            match o.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail(_) => s.failed += 1,
                Verdict::Note(_) => s.notes += 1,
                Verdict::Skip(_) => s.skipped += 1,
            }
        }
        s
    }

    pub fn line(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "check: {} passed, {} failed, {}, {} skipped",
            self.passed,
            self.failed,
            plural(self.notes, "note", "notes"),
            self.skipped
        )
    }
}

/// ANSI colours, or none.
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn verdict(&self, verdict: &Verdict) -> String {
        let (code, word) = match verdict {
            Verdict::Pass => ("32", "pass"),
            Verdict::Fail(_) => ("1;31", "FAIL"),
            Verdict::Note(_) => ("33", "note"),
            Verdict::Skip(_) => ("2", "skip"),
        };
        self.paint(code, word)
    }
}

const INDENT: &str = "                          ";

/// The width of the id column: the longest id shown, so that titles line
/// up (at least 18, the width before the identity level's longer ids).
fn id_width<'a>(ids: impl Iterator<Item = &'a str>) -> usize {
    ids.map(str::len).max().unwrap_or(0).max(18)
}

/// The human-readable report: one line per check, details under the ones
/// that did not simply pass, then the summary line.
pub fn text(target: &str, outcomes: &[Outcome], style: &Style) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "evchat check {target}: {} checks", outcomes.len());
    let width = id_width(outcomes.iter().map(|o| o.check.id));
    for o in outcomes {
        let c = o.check;
        let _ = writeln!(
            out,
            "  {}  {:<width$}  {}",
            style.verdict(&o.verdict),
            c.id,
            c.title
        );
        match &o.verdict {
            Verdict::Pass => {}
            Verdict::Note(note) | Verdict::Skip(note) => {
                let _ = writeln!(out, "{INDENT}{note}");
            }
            Verdict::Fail(f) => failure_text(&mut out, c, f),
        }
        // Without --spawn the stop is the failure shown above already.
        if o.stopped_after && !matches!(o.verdict, Verdict::Fail(_)) {
            let _ = writeln!(out, "{INDENT}{STOPPED_AFTER}");
        }
    }
    out.push_str(&Summary::of(outcomes).line());
    out.push('\n');
    if let Some(note) = closing_note(outcomes) {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

fn failure_text(out: &mut String, check: &Check, f: &Failure) {
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "{INDENT}{name:<10} {value}");
    };
    let _ = writeln!(out, "{INDENT}{}", f.summary);
    field(out, "rule:", check.rule);
    if let Some(quote) = check.quote {
        field(out, "statement:", &format!("\"{quote}\""));
    }
    for (conn, bytes) in &f.sent {
        field(
            out,
            "sent:",
            &format!("{conn}: {}   {}", hex(bytes), describe(bytes)),
        );
    }
    field(out, "expected:", &f.expected);
    match &f.received_bytes {
        Some(bytes) => field(
            out,
            "received:",
            &format!("{}   {}", hex(bytes), f.received),
        ),
        None => field(out, "received:", &f.received),
    }
    field(out, "hint:", f.hint_or(check.hint));
}

/// The report as one JSON document: `{"target", "checks": [...], "summary"}`.
pub fn json(target: &str, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{{\"target\":{},\"checks\":[", quote(target));
    for (n, o) in outcomes.iter().enumerate() {
        let c = o.check;
        out.push_str(if n == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "{{{},\"verdict\":{}",
            check_fields(c),
            quote(o.verdict.name())
        );
        match &o.verdict {
            Verdict::Pass => out.push_str(",\"detail\":null"),
            Verdict::Note(d) | Verdict::Skip(d) => {
                let _ = write!(out, ",\"detail\":{}", quote(d));
            }
            Verdict::Fail(f) => {
                let sent: Vec<String> = f
                    .sent
                    .iter()
                    .map(|(conn, bytes)| {
                        format!(
                            "{{\"conn\":{},\"hex\":{},\"frame\":{}}}",
                            quote(conn),
                            quote(&hex(bytes)),
                            quote(&describe(bytes))
                        )
                    })
                    .collect();
                let _ = write!(
                    out,
                    concat!(
                        ",\"detail\":{},\"sent\":[{}],\"expected\":{},",
                        "\"received\":{},\"received_hex\":{},\"hint\":{}"
                    ),
                    quote(&f.summary),
                    sent.join(","),
                    quote(&f.expected),
                    quote(&f.received),
                    f.received_bytes
                        .as_ref()
                        .map_or("null".to_string(), |b| quote(&hex(b))),
                    quote(f.hint_or(c.hint))
                );
            }
        }
        let _ = write!(out, ",\"stopped_after\":{}}}", o.stopped_after);
    }
    let s = Summary::of(outcomes);
    let _ = write!(
        out,
        "\n],\"summary\":{{\"passed\":{},\"failed\":{},\"notes\":{},\"skipped\":{}}}",
        s.passed, s.failed, s.notes, s.skipped
    );
    if let Some(note) = closing_note(outcomes) {
        let _ = write!(out, ",\"note\":{}", quote(&note));
    }
    out.push_str("}\n");
    out
}

/// `--list`: the chosen checks (`--level`, `--only`), without running them,
/// under their levels.
pub fn list_text(checks: &[&Check]) -> String {
    let mut out = String::new();
    let width = id_width(checks.iter().map(|c| c.id));
    for level in [
        Level::Required,
        Level::Choices,
        Level::Robust,
        Level::Identity,
        Level::Rooms,
    ] {
        let mut of_level = checks.iter().filter(|c| c.level == level).peekable();
        if of_level.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "{}:", level.name());
        for c in of_level {
            let _ = writeln!(out, "  {:<width$}  {}  ({})", c.id, c.title, c.rule);
        }
    }
    out
}

/// `--list --json`: `{"checks": [{"id", "level", "title", "rule", "quote", "needs"}]}`.
pub fn list_json(checks: &[&Check]) -> String {
    let checks: Vec<String> = checks
        .iter()
        .map(|c| {
            let needs: Vec<String> = c.needs.iter().map(|n| quote(n)).collect();
            format!("{{{},\"needs\":[{}]}}", check_fields(c), needs.join(","))
        })
        .collect();
    format!("{{\"checks\":[\n{}\n]}}\n", checks.join(",\n"))
}

/// What both JSON documents say of a check, in this order: `"id"`,
/// `"level"`, `"title"`, `"rule"`, `"quote"` (without the braces).
fn check_fields(c: &Check) -> String {
    format!(
        "\"id\":{},\"level\":{},\"title\":{},\"rule\":{},\"quote\":{}",
        quote(c.id),
        quote(c.level.name()),
        quote(c.title),
        quote(c.rule),
        c.quote.map_or("null".to_string(), quote),
    )
}

/// A JSON string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    evchat::cli::json_string(&mut out, text);
    out
}
